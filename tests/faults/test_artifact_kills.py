"""SIGKILL of a process while it writes artifacts leaves no partially visible artifact (issue 10).

A writer process loops: a ``start_run`` whose outputs folder gets one file of a random size
(stored as the run's artifact when the block ends), then ``run.register_model`` of that
artifact and ``ws.models.register`` of a local copy. The test kills it at a random moment,
starts a new writer (which opens the workspace, so the reaper salvages what the dead run left
in its outputs folder) and checks, after every kill, that every artifact row and every model
file listed has a file of the recorded size and sha256.

Quick: 8 kills, files of 1-20 MB; ``--soak``: 50 kills, 1-200 MB.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._harness import child_env, kill, percentiles, wait_until

WRITER = """
import os, random, sys, time
from pathlib import Path
import jupyter_mlops as mlops

seed, max_mb, progress = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(seed)
ws = mlops.workspace()
local = progress.with_name(f"local-{seed}.bin")

def step(what):
    with open(progress, "a") as out:
        out.write(f"{time.time()} {what}\\n")

for i in range(1000):
    size = rng.randint(2**20, max_mb * 2**20)
    step(f"run {i} {size}")
    with mlops.start_run(f"art-{seed}-{i}") as run:
        with open(mlops.outputs_dir() / "blob.bin", "wb") as out:
            left = size
            while left:
                chunk = os.urandom(min(left, 2**20))
                out.write(chunk)
                left -= len(chunk)
    step(f"stored {i}")
    run.register_model("blob", "blob.bin")
    step(f"model {i}")
    run.download("outputs/blob.bin", local)
    ws.models.register("local", local)
    step(f"local {i}")
"""


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _bad_artifacts(ws: Any) -> list[str]:
    """Every listed artifact and model file whose file is missing or differs from its row."""
    from jupyter_mlops.registry._files import Blobs

    bad = []
    root = Path(ws.artifacts.root) / "runs"
    checked = 0
    for run in ws.runs(limit=None):
        for row in run.artifacts():
            path = root / run.id / row["path"]
            checked += 1
            if not path.is_file():
                bad.append(f"run {run.id} lists {row['path']} but it has no file")
            elif path.stat().st_size != row["size"] or _sha(path) != row["sha256"]:
                bad.append(f"run {run.id} {row['path']}: file of {path.stat().st_size} bytes "
                           f"does not match its row ({row['size']} bytes, {row['sha256'][:12]})")
    blobs = Blobs(ws.backend, "models")
    for model in ws.models.list():
        for row in model.files():
            path = Path(blobs.full(model._row["storage"], row["path"]))
            checked += 1
            if not path.is_file():
                bad.append(f"model {model.ref} lists {row['path']} but it has no file")
            elif path.stat().st_size != row["size"] or _sha(path) != row["sha256"]:
                bad.append(f"model {model.ref} {row['path']}: file differs from its row")
    _bad_artifacts.checked = checked  # type: ignore[attr-defined]
    return bad


def test_kill_during_artifact_writes_leaves_nothing_partial(fault_ws: Any, ws_dir: Path,
                                                            tmp_path: Path, soak: bool,
                                                            figures: dict) -> None:
    ws, rng = fault_ws, random.Random(7)
    kills, max_mb = (50, 200) if soak else (8, 20)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = child_env(ws_dir)
    # The kill lands at a random moment of a cycle: write, store, register, register again.
    # A cycle's length is measured from the writers' progress lines as the test goes.
    durations = [0.2 + max_mb * 0.03]
    phases: list[str] = []
    bad_after_kill: dict[int, list[str]] = {}
    cycles = 0
    for k in range(kills):
        progress = tmp_path / f"progress-{k}"
        writer = subprocess.Popen([sys.executable, str(script), str(k), str(max_mb),
                                   str(progress)], env=env, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: progress.exists() or writer.poll() is not None, 60,
                       "the writer to start")
            assert writer.poll() is None, writer.stderr.read().decode()
            time.sleep(rng.uniform(0.0, sorted(durations)[len(durations) // 2]))
            lines = progress.read_text().splitlines()
            kill(writer.pid)
            writer.wait(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stderr.close()
        phases.append(lines[-1].split()[1] if lines else "start")
        starts = [float(line.split()[0]) for line in lines if line.split()[1] == "run"]
        durations += [b - a for a, b in zip(starts, starts[1:])]
        cycles += sum(line.split()[1] == "local" for line in lines)
        bad = _bad_artifacts(ws)
        if bad:
            bad_after_kill[k] = bad

    # One more process opens the workspace: the reaper salvages the last run's outputs.
    from ._harness import open_workspace_elsewhere

    opened = open_workspace_elsewhere(ws_dir)
    final_bad = _bad_artifacts(ws)
    sizes = [a["size"] for r in ws.runs(limit=None) for a in r.artifacts()]
    figures.update(kills=kills, max_mb=max_mb, full_cycles=cycles,
                   killed_after={p: phases.count(p) for p in sorted(set(phases))},
                   runs=len(ws.runs(limit=None)), model_versions=len(ws.models.list()),
                   artifacts_checked=_bad_artifacts.checked,  # type: ignore[attr-defined]
                   artifact_mb=percentiles(s / 2**20 for s in sizes),
                   partially_visible=len(final_bad) + sum(map(len, bad_after_kill.values())))
    assert opened.returncode == 0, opened.stderr
    assert not bad_after_kill, f"partially visible artifacts after kills: {bad_after_kill}"
    assert not final_bad, f"partially visible artifacts: {final_bad}"
