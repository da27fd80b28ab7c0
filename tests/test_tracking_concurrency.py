"""Several processes log into ONE SQLite workspace at once while another process reads it.

Each writer process runs its own ``start_run`` and logs ``POINTS`` points (flushing every
``FLUSH_EVERY`` points, so the writers contend for SQLite's write lock many times); a reader
process polls ``ws.runs()`` and ``run.metrics()`` the whole time. Nothing may be lost, no
process may see "database is locked", and every run must end ``completed``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jupyter_mlops

WRITERS = 4
POINTS = 20_000
FLUSH_EVERY = 1_000
EXPERIMENT = "concurrency"
TIMEOUT = 90  # seconds for the whole scenario; it takes a few seconds

# A writer: open its run, say it is ready, wait for the common start, log, flush.
WRITER = f"""
import sys, time
from pathlib import Path
import jupyter_mlops as mlops

name, signals = sys.argv[1], Path(sys.argv[2])
with mlops.start_run(name, experiment={EXPERIMENT!r}) as run:
    (signals / f"ready-{{name}}").write_text(run.id)
    while not (signals / "go").exists():
        time.sleep(0.01)
    for i in range({POINTS}):
        mlops.log("loss", i * 0.5)
        mlops.log("step_seen", i, step=i)
        if i % {FLUSH_EVERY} == {FLUSH_EVERY} - 1:
            mlops.flush()
print(run.id)
"""

# The reader: poll runs and their latest metrics until told to stop; a latest value must
# never go backwards (points are written in order and never lost).
READER = f"""
import sys, time
from pathlib import Path
import jupyter_mlops as mlops

signals = Path(sys.argv[1])
ws = mlops.workspace()
polls, latest = 0, {{}}
(signals / "reader-ready").touch()
while True:
    stopping = (signals / "stop").exists()  # read after it appeared: a last full poll
    for run in ws.runs(experiment={EXPERIMENT!r}):
        loss = run.metrics().get("loss")
        if loss is not None:
            if loss < latest.get(run.id, -1.0):
                sys.exit(f"{{run.id}}: latest loss went back from {{latest[run.id]}} to {{loss}}")
            latest[run.id] = loss
    polls += 1
    if stopping:
        break
print(polls, len(latest))
"""


def _child_env(workspace_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JUPYTER_MLOPS_")  # no database URL, run id... from outside
    }
    env["JUPYTER_MLOPS_WORKSPACE"] = str(workspace_dir)
    # The children import the jupyter_mlops under test, whatever copy is installed.
    source = str(Path(jupyter_mlops.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def _wait_for(
    condition: Callable[[], bool], what: str, deadline: float, procs: list[subprocess.Popen]
) -> None:
    while not condition():
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                _, err = proc.communicate()
                raise AssertionError(f"a process failed while waiting for {what}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_writers_and_a_reader_share_one_sqlite_workspace(tmp_path: Path) -> None:
    workspace_dir = tmp_path / "ws"  # brand new: the processes also race to create it
    signals = tmp_path / "signals"
    signals.mkdir()
    env = _child_env(workspace_dir)
    deadline = time.monotonic() + TIMEOUT

    def start(code: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    names = [f"writer-{i}" for i in range(WRITERS)]
    reader = start(READER, str(signals))
    writers = [start(WRITER, name, str(signals)) for name in names]
    everyone = [reader, *writers]
    try:
        _wait_for(
            lambda: (
                (signals / "reader-ready").exists()
                and all((signals / f"ready-{n}").exists() for n in names)
            ),
            "every process to be ready",
            deadline,
            everyone,
        )
        (signals / "go").touch()  # all writers log at once
        results = {}
        for name, proc in zip(names, writers, strict=True):
            results[name] = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        (signals / "stop").touch()
        reader_out, reader_err = reader.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in everyone:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    for name, proc in zip(names, writers, strict=True):
        _, err = results[name]
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{err}"
        assert "database is locked" not in err, f"{name}:\n{err}"
        assert "cannot write metrics" not in err, f"{name}:\n{err}"
    assert reader.returncode == 0, f"reader exited {reader.returncode}:\n{reader_err}"
    assert "database is locked" not in reader_err, reader_err
    polls, runs_seen = map(int, reader_out.split())
    assert polls > 1 and runs_seen == WRITERS, reader_out

    ws = jupyter_mlops.workspace(workspace_dir)
    runs = ws.runs(experiment=EXPERIMENT)
    assert sorted(run.name for run in runs) == names
    run_ids = {out.strip() for out, _ in results.values()}
    assert {run.id for run in runs} == run_ids
    for run in runs:
        assert run.status == "completed", (run.name, run.status)
        loss = run.metric_history("loss")
        assert len(loss) == POINTS, (run.name, len(loss))
        assert loss["step"].tolist() == list(range(POINTS)), run.name
        assert loss["value"].iloc[-1] == (POINTS - 1) * 0.5, run.name
        seen = run.metric_history("step_seen")
        assert len(seen) == POINTS and seen["value"].iloc[-1] == POINTS - 1, run.name
        assert run.metrics() == {"loss": (POINTS - 1) * 0.5, "step_seen": POINTS - 1}
