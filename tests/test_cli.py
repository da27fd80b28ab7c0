"""``jupyter mlops`` end to end: real papermill runs in real kernels, then the views."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

import jupyter_mlops as mlops

from .conftest import cli, make_notebook, wait_until

TRAIN = """
import jupyter_mlops as mlops
for epoch in range(epochs):
    mlops.log("loss", lr / (epoch + 1), step=epoch)
    print(f"epoch {epoch}")
mlops.log("accuracy", 0.9)
(mlops.outputs_dir() / "model.txt").write_text(f"lr={lr}")
"""


@pytest.fixture
def train_nb(tmp_path: Path) -> Path:
    return make_notebook(tmp_path / "train.ipynb", TRAIN, "print('done')",
                         parameters="lr = 0.1\nepochs = 2")


def test_run_notebook_end_to_end(ws_dir: Path, train_nb: Path) -> None:
    result = cli("run", str(train_nb), "-p", "lr", "0.5", "-p", "epochs", "3",
                 "--experiment", "cli", "--tag", "team=vision")
    assert result.returncode == 0, result.stderr
    assert "epoch 2" in result.stdout and "done" in result.stdout
    run = mlops.workspace().runs()[0]
    assert run.status == "completed"
    assert run.params == {"lr": 0.5, "epochs": 3}
    assert run.tags == {"team": "vision"}
    assert run.experiment == "cli"
    assert run.metric_history("loss")["value"].tolist() == [0.5, 0.25, 0.5 / 3]
    assert "epoch 0\nepoch 1\nepoch 2\n" in run.logs()
    paths = {a["path"] for a in run.artifacts()}
    assert paths == {"notebook.ipynb", "outputs/model.txt"}
    executed = json.loads(run.workspace.artifacts.open(run.id, "notebook.ipynb").read())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "lr = 0.5" in "".join(injected[0]["source"])
    assert run.progress == {**run.progress, "cell": 3, "cells": 3}
    env = run.environment
    assert env["python"] and "papermill" in env["packages"]

    show = cli("runs", "show", run.id)
    assert show.returncode == 0
    assert "completed" in show.stdout and "loss" in show.stdout and "outputs/model.txt" in show.stdout
    listing = cli("runs", "ls", "--json")
    assert json.loads(listing.stdout)[0]["metrics"]["accuracy"] == 0.9
    table = cli("runs", "ls", "--experiment", "cli")
    assert run.id in table.stdout and "STATUS" in table.stdout
    logs = cli("runs", "logs", run.id[:6])
    assert logs.stdout.startswith("epoch 0")

    passed = cli("gate", "--run", run.id, "--metric", "accuracy", "--min", "0.85")
    assert passed.returncode == 0 and "gate passed" in passed.stdout
    failed = cli("gate", "--run", run.id, "--metric", "accuracy", "--min", "0.95")
    assert failed.returncode == 1
    assert failed.stdout.strip().count("\n") == 0 and "below the minimum 0.95" in failed.stdout
    missing = cli("gate", "--run", run.id, "--metric", "f1", "--min", "0.5")
    assert missing.returncode == 2 and "no metric 'f1'" in missing.stderr
    no_run = cli("gate", "--run", "nope", "--metric", "f1", "--min", "0.5")
    assert no_run.returncode == 2 and "no run matches 'nope'" in no_run.stderr


def test_failing_cell_keeps_traceback_and_partial_results(ws_dir: Path, tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "bad.ipynb",
                       "import jupyter_mlops as mlops\nmlops.log('x', 1.0)\nprint('before')",
                       "def inner():\n    raise ValueError('bad batch size 0')\ninner()",
                       "print('never')")
    result = cli("run", str(nb))
    assert result.returncode == 1
    run = mlops.workspace().runs()[0]
    assert run.status == "failed"
    assert "ValueError: bad batch size 0" in run.error
    assert "\x1b[" not in run.error  # ANSI colours stripped
    assert run.metrics() == {"x": 1.0}
    assert "before" in run.logs() and "never" not in run.logs()
    assert {a["path"] for a in run.artifacts()} == {"notebook.ipynb"}
    show = cli("runs", "show", run.id)
    assert "ValueError: bad batch size 0" in show.stdout and "inner()" in show.stdout


def test_dead_kernel_fails_run_quickly_and_keeps_partial_notebook(ws_dir: Path, tmp_path: Path
                                                                  ) -> None:
    pid_file = tmp_path / "kernel.pid"
    nb = make_notebook(tmp_path / "die.ipynb",
                       f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                       "print('started')",
                       "import time\ntime.sleep(120)",
                       "print('never')")
    result = cli("run", str(nb), "--no-wait")
    assert result.returncode == 0
    run = mlops.workspace().get_run(result.stdout.strip())
    wait_until(lambda: (run.progress or {}).get("cell") == 2 and pid_file.exists(),
               what="the second cell to start")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    wait_until(lambda: run.status == "failed", timeout=30, what="the run to fail")
    assert "kernel died while running cell 2 of 3" in run.error
    assert "('import time')" in run.error
    executed = json.loads(run.workspace.artifacts.open(run.id, "notebook.ipynb").read())
    assert "".join(executed["cells"][0]["outputs"][0]["text"]) == "started\n"


def test_progress_is_visible_while_running(ws_dir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    nb = make_notebook(tmp_path / "slow.ipynb", "print('one')",
                       f"import time, pathlib\nwhile not pathlib.Path({str(flag)!r}).exists():\n"
                       "    time.sleep(0.05)", "print('three')")
    run_id = cli("run", str(nb), "--no-wait").stdout.strip()
    run = mlops.workspace().get_run(run_id)
    progress = wait_until(lambda: run.progress if (run.progress or {}).get("cell") == 2 else None,
                          what="cell 2 to be reported")
    assert progress["cells"] == 3 and progress["source"].startswith("import time, pathlib")
    assert run.status == "running"
    assert wait_until(lambda: "one" in run.logs(), what="the log to stream")
    flag.touch()
    run.wait(timeout=60)
    assert run.logs() == "one\nthree\n"


def test_cancel_a_running_notebook(ws_dir: Path, tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "long.ipynb", "print('working')\nimport time\ntime.sleep(300)")
    run_id = cli("run", str(nb), "--no-wait").stdout.strip()
    run = mlops.workspace().get_run(run_id)
    wait_until(lambda: "working" in run.logs(), what="the cell to start")
    assert cli("runs", "cancel", run_id).returncode == 0
    wait_until(lambda: run.status == "canceled", timeout=30, what="the run to be canceled")
    assert "working" in run.logs()


def test_timeout_fails_the_run_with_the_reason(ws_dir: Path, tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(300)")
    result = cli("run", str(nb), "--timeout", "2")
    assert result.returncode == 1
    run = mlops.workspace().runs()[0]
    assert run.status == "failed" and run.error == "timed out after 2 s"


def _db_state(ws_dir: Path) -> tuple:
    db = ws_dir / "mlops.db"
    if not db.exists():
        return ()
    conn = sqlite3.connect(db)
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("experiments", "runs", "metrics", "artifacts"))


@pytest.fixture(scope="module")
def stored_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A workspace holding one completed run, shared by the bad-input cases."""
    root = tmp_path_factory.mktemp("bad-input")
    nb = make_notebook(root / "train.ipynb", TRAIN, parameters="lr = 0.1\nepochs = 2")
    garbage = root / "garbage.ipynb"
    garbage.write_text("{ not json")
    ws_dir = root / "ws"
    assert cli("run", str(nb), env={"JUPYTER_MLOPS_WORKSPACE": str(ws_dir)}).returncode == 0
    return ws_dir, nb, garbage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no-such.ipynb"], "notebook 'no-such.ipynb' does not exist"),
        (["run", "{nb}", "-p", "lr"], "expected 2 arguments"),
        (["run", "{nb}", "-p", "not a name", "1"], "is not a name"),
        (["run", "{nb}", "--timeout", "-3"], "timeout must be a positive"),
        (["run", "{garbage}"], "is not a valid notebook"),
        (["run", "{nb}", "--tag", "novalue"], "--tag takes key=value"),
        (["runs", "show", "does-not-exist"], "no run matches 'does-not-exist'"),
        (["runs", "logs", "does-not-exist"], "no run matches"),
        (["runs", "cancel", "does-not-exist"], "no run matches"),
        (["runs", "ls", "--status", "finished"], "unknown status 'finished'"),
        (["gate", "--run", "x", "--metric", "m"], "needs --min X or --max X"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    stored_ws: tuple[Path, Path, Path], args: list[str], message: str
) -> None:
    ws_dir, nb, garbage = stored_ws
    before = _db_state(ws_dir)
    assert before[1] == 1  # the stored run to protect
    args = [a.format(nb=nb, garbage=garbage) for a in args]
    result = cli(*args, env={"JUPYTER_MLOPS_WORKSPACE": str(ws_dir)})
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _db_state(ws_dir) == before


def test_newer_schema_and_unwritable_workspace_exit_2(ws_dir: Path, train_nb: Path,
                                                      tmp_path: Path) -> None:
    assert cli("run", str(train_nb)).returncode == 0
    db = sqlite3.connect(ws_dir / "mlops.db")
    db.execute("UPDATE alembic_version SET version_num = 'ffff'")
    db.commit()
    result = cli("runs", "ls")
    assert result.returncode == 2 and "newer than this jupyter-mlops" in result.stderr
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1

    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli("run", str(train_nb), env={"JUPYTER_MLOPS_WORKSPACE": str(blocker / "ws")})
    assert result.returncode == 2 and "not writable" in result.stderr


def test_read_only_commands_create_no_workspace(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"JUPYTER_MLOPS_WORKSPACE": ""}
    listing = cli("runs", "ls", cwd=empty, env=env)
    assert listing.returncode == 0 and "nothing has run here" in listing.stdout
    show = cli("runs", "show", "abc", cwd=empty, env=env)
    assert show.returncode == 2 and "no workspace at" in show.stderr
    gate = cli("gate", "--run", "abc", "--metric", "m", "--min", "1", cwd=empty, env=env)
    assert gate.returncode == 2
    assert not (empty / ".mlops").exists()
