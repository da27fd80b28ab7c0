"""Every notebook in ``example-notebooks/`` runs with ``jupyter mlops run`` on CPU, as a
newcomer would run it, and shows what it promises: metric thresholds, registered versions,
an endpoint that answered (and was deleted), the CI gate's exit codes.

Each notebook runs in its own workspace from a copy in a temporary folder (the notebooks
write data next to themselves). Their CPU defaults keep each one to about a minute here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest

import jupyter_mlops as mlops

from .conftest import cli, make_notebook

EXAMPLES = Path(__file__).resolve().parent.parent / "example-notebooks"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))


@pytest.fixture
def ws_clean(ws) -> Iterator:
    """The test's workspace; endpoints a failed notebook left serving are deleted after."""
    yield ws
    for endpoint in ws.endpoints():
        endpoint.delete()


def _run_notebook(name: str, folder: Path, *params: str) -> mlops.Run:
    shutil.copy(EXAMPLES / name, folder / name)
    args = [p for pair in zip(params[::2], params[1::2], strict=True) for p in ("-p", *pair)]
    done = cli("run", name, "--experiment", "examples", *args, cwd=folder, timeout=900)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    run = mlops.workspace().get_run(Path(name).stem)
    assert run.status == "completed"
    assert "notebook.ipynb" in {a["path"] for a in run.artifacts()}
    return run


def check_quickstart(ws, run: mlops.Run, folder: Path) -> None:
    assert run.metrics()["accuracy"] >= 0.9
    history = run.metric_history("accuracy")
    assert history["step"].tolist() == list(range(15))
    assert "outputs/model.npz" in {a["path"] for a in run.artifacts()}


def check_datasets_and_gate(ws, run: mlops.Run, folder: Path) -> None:
    versions = ws.datasets.list("customers")
    assert sorted(d.version for d in versions) == [1, 2]
    v1, v2 = ws.datasets.get("customers:1"), ws.datasets.get("customers:2")
    assert v1.profile["tables"]["customers.csv"]["rows"] == 800
    assert v2.profile["tables"]["customers.csv"]["rows"] == 1000
    model = ws.models.get("churn")
    assert model.version == 1 and model.tags == {"data": "customers:2"}
    trained = model.run
    assert trained.params == {"epochs": 40, "lr": 0.5}
    assert [d.ref for d in trained.inputs()] == ["customers:2"]
    assert trained.metrics()["accuracy"] >= 0.75
    assert run.metrics()["gate_passed"] == 1.0
    # The gate as a CI pipeline calls it, from the workspace the notebook used.
    held = cli("gate", "--model", "churn:1", "--metric", "accuracy", "--min", "0.75")
    assert held.returncode == 0, held.stdout + held.stderr
    assert "gate passed" in held.stdout
    failed = cli("gate", "--model", "churn", "--metric", "accuracy", "--min", "0.999")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "gate failed" in failed.stdout
    assert cli("gate", "--run", trained.id, "--metric", "accuracy", "--max", "0.5").returncode == 1


def check_pytorch_digits(ws, run: mlops.Run, folder: Path) -> None:
    metrics = run.metrics()
    assert metrics["best_accuracy"] >= 0.85 and metrics["served_accuracy"] >= 0.85
    trained = ws.get_run("cnn")
    assert trained.metrics()["accuracy"] >= 0.85
    sweep = ws.get_sweep("cnn-sweep")
    assert sweep.status == "completed"
    board = sweep.to_dataframe()
    assert len(board) == 4
    assert set(board["status"]) <= {"completed", "pruned"}
    model = ws.models.get("digits-cnn")
    assert model.version == 1
    assert model.tags == {"arch": "cnn", "framework": "torch", "sweep": sweep.id}
    assert model.run == sweep.best_run
    lineage = ws.lineage(model="digits-cnn:1").to_dict()
    assert sweep.id in str(lineage)
    _assert_served_and_deleted(ws, "digits-cnn", "digits-cnn:1")


def check_keras_transfer(ws, run: mlops.Run, folder: Path) -> None:
    metrics = run.metrics()
    assert metrics["best_val_accuracy"] >= 0.8 and metrics["served_accuracy"] >= 0.8
    sweep = ws.get_sweep("head-sweep")
    assert sweep.status == "completed"
    board = sweep.to_dataframe()
    assert len(board) == 4
    assert set(board["status"]) <= {"completed", "pruned"}
    # The callback logged every epoch a trial ran, as Keras reported it.
    for trial in sweep.trials():
        steps = trial.metric_history("val_accuracy")["step"].tolist()
        assert steps == list(range(len(steps))) and steps
    model = ws.models.get("digits-transfer")
    assert model.version == 1 and model.tags["framework"] == "keras"
    assert [f["path"] for f in model.files()] == ["model.keras"]
    _assert_served_and_deleted(ws, "digits-transfer", "digits-transfer:1")


def _assert_served_and_deleted(ws, name: str, ref: str) -> None:
    """The notebook's endpoint served requests, then the notebook deleted it."""
    assert ws.endpoints() == []
    (endpoint,) = [e for e in ws.endpoints(all=True) if e.name == name]
    info = endpoint.to_dict()
    assert info["status"] == "stopped", info
    assert info["model"] == ref, info
    assert info["stats"]["requests"] >= 50, info


CHECKS: dict[str, Callable[..., None]] = {
    "quickstart.ipynb": check_quickstart,
    "datasets-and-gate.ipynb": check_datasets_and_gate,
    "pytorch-digits.ipynb": check_pytorch_digits,
    "keras-transfer.ipynb": check_keras_transfer,
}


def test_every_example_has_checks_and_a_parameters_cell() -> None:
    assert set(NOTEBOOKS) == set(CHECKS), "add a check for every example notebook"
    for name in NOTEBOOKS:
        notebook = nbformat.read(EXAMPLES / name, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert notebook.cells[0].cell_type == "markdown", name
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
            f"{name} is stored with outputs: clear them")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_example_notebook_runs_and_shows_its_results(name: str, ws_clean, tmp_path) -> None:
    if name in ("pytorch-digits.ipynb", "keras-transfer.ipynb"):
        pytest.importorskip("torch" if name.startswith("pytorch") else "keras")
    run = _run_notebook(name, tmp_path)
    CHECKS[name](ws_clean, run, tmp_path)


def test_a_notebook_run_sweeps_on_its_own_slot(ws_clean, tmp_path, monkeypatch) -> None:
    """With one CPU slot, held by the notebook run itself, its %sweep's trials run on that
    slot (one at a time) instead of queueing behind the notebook forever."""
    monkeypatch.delenv("JUPYTER_MLOPS_CPU_SLOTS", raising=False)
    make_notebook(
        tmp_path / "nested.ipynb",
        "%load_ext jupyter_mlops\nimport jupyter_mlops as mlops",
        "%%train --name base -p lr=0.1\nfor step in range(3):\n    mlops.log('acc', lr * step)",
        "sweep = %sweep --param lr=choice(0.1,0.2,0.3) --sampler grid --metric acc --trials 3 --concurrency 3 "
        "--name nested-sweep\nprint(sweep.status)",
        parameters="epochs = 1",
    )
    done = cli("run", "nested.ipynb", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = ws_clean.get_sweep("nested-sweep")
    assert sweep.status == "completed" and sweep.spec.concurrency == 1
    notebook_run = ws_clean.get_run("nested")
    slots = notebook_run.info()["resources"]["slots"]
    for trial in sweep.trials():
        resources = trial.info()["resources"]
        assert resources["shared_with_parent"] and resources["slots"] == slots
    assert sweep.best_run.params["lr"] == 0.3
