"""Default entry script for a Keras model saved as ``.keras``.

Request: JSON ``{"data": [...]}``, a batch of inputs. Response: the model's outputs as lists.
"""

import json
from pathlib import Path

import numpy as np

import jupyter_mlops as mlops

model = None


def init():
    global model
    import keras

    path = next(Path(mlops.model_dir()).rglob("*.keras"))
    model = keras.saving.load_model(path)


def run(raw_data):
    data = json.loads(raw_data)
    batch = np.asarray(data["data"] if isinstance(data, dict) else data, dtype="float32")
    return model.predict(batch, verbose=0).tolist()
