"""Default entry script for a PyTorch model: TorchScript (``torch.jit.save``), or a
``state_dict`` plus the class to build, named in the model version's metadata
(``tags={"torch_class": "package.module:ClassName"}``), loaded with ``weights_only=True``.

Request: JSON ``{"data": [...]}``, a batch of inputs. Response: the model's outputs as lists.
"""

import importlib
import json
import os
from pathlib import Path

import torch

import jupyter_mlops as mlops

model = None


def init():
    global model
    path = next(p for p in Path(mlops.model_dir()).rglob("*") if p.suffix in (".pt", ".pth"))
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:  # not TorchScript: a state_dict for a class named in the tags
        tags = json.loads(os.environ.get("MLOPS_MODEL_INFO", "{}")).get("tags", {})
        target = tags.get("torch_class", "")
        module_name, _, class_name = target.partition(":")
        if not class_name:
            raise RuntimeError(
                f"{path.name} is a state_dict; tag the model version with "
                "torch_class=package.module:ClassName so the server can build it") from None
        model = getattr(importlib.import_module(module_name), class_name)()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()


def run(raw_data):
    data = json.loads(raw_data)
    batch = torch.as_tensor(data["data"] if isinstance(data, dict) else data,
                            dtype=torch.float32)
    with torch.no_grad():
        return model(batch).tolist()
