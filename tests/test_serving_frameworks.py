"""The default entry scripts for Keras and PyTorch models, on a real server: ``ws.deploy``
without ``--entry`` serves a ``.keras`` model, a TorchScript ``.pt`` and a ``state_dict``
whose class is named in the version's ``torch_class`` tag, and the answers equal the model's
own predictions. A ``state_dict`` without that tag fails with the tag to add.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from jupyter_mlops.serving import EndpointFailed

BATCH = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")

TINY_NET = '''
import torch


class TinyNet(torch.nn.Module):
    """Built without arguments, as the default entry script builds a tagged class."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.layer(x), dim=1)
'''


def _served_answer(ws, model: str, name: str) -> np.ndarray:
    endpoint = ws.deploy(model, name=name)
    try:
        return np.asarray(endpoint.score({"data": BATCH.tolist()}), dtype="float32")
    finally:
        endpoint.delete()


def test_a_keras_model_is_served_by_the_default_entry(ws, tmp_path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # the test extra installs tensorflow-cpu
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    path = tmp_path / "tiny.keras"
    model.save(path)
    ws.models.register("tiny-keras", path)
    answer = _served_answer(ws, "tiny-keras", "keras-default")
    np.testing.assert_allclose(answer, model.predict(BATCH, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_torchscript_model_is_served_by_the_default_entry(ws, tmp_path: Path) -> None:
    import torch  # the test extra installs torch==2.13.0
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    ws.models.register("tiny-script", path)
    answer = _served_answer(ws, "tiny-script", "torchscript-default")
    with torch.no_grad():
        expected = net(torch.as_tensor(BATCH)).numpy()
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)


def test_a_state_dict_is_built_from_the_class_its_tag_names(ws, tmp_path: Path,
                                                            monkeypatch) -> None:
    import torch  # the test extra installs torch==2.13.0
    package = tmp_path / "code"
    package.mkdir()
    (package / "tinynet.py").write_text(TINY_NET)
    # The server imports the class: it must find the module, as a user's package would be.
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(package), *filter(None, [os.environ.get("PYTHONPATH")])]))
    from tinynet import TinyNet

    net = TinyNet().eval()
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)

    ws.models.register("tiny-untagged", path)
    with pytest.raises(EndpointFailed, match=r"torch_class=package\.module:ClassName"):
        ws.deploy("tiny-untagged", name="untagged")
    assert ws.get_endpoint("untagged").status == "failed"

    ws.models.register("tiny-state", path, tags={"torch_class": "tinynet:TinyNet"})
    answer = _served_answer(ws, "tiny-state", "state-dict-default")
    with torch.no_grad():
        expected = net(torch.as_tensor(BATCH)).numpy()
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
