"""Default entry script for a scikit-learn (or any joblib/pickle) model.

Request: JSON ``{"data": [[...], ...]}`` (or a bare list of rows). Response: the model's
``predict`` for those rows as a list. Loading a pickle or joblib file runs code from it:
serve only models you trust.
"""

import json
from pathlib import Path

import joblib

import jupyter_mlops as mlops

model = None


def init():
    global model
    folder = mlops.model_dir()
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".joblib", ".pkl", ".pickle"))
    model = joblib.load(files[0])


def run(raw_data):
    data = json.loads(raw_data)
    rows = data["data"] if isinstance(data, dict) else data
    return model.predict(rows).tolist()
