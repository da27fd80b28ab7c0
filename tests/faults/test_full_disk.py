"""A full disk under logging, registration and a sweep (issue 10).

The workspace lives on a 16 MB tmpfs, which the test fills with a filler file at the worst
moments: while a run logs, while a model is registered, when a sweep is submitted and while
its trials log. Each time:

- nothing crashes (the process, the metric writer thread, the sweep controller),
- every error raised is typed (``jupyter_mlops.errors.MlopsError``: ``WorkspaceError`` or
  another), never a raw ``sqlite3``/``OperationalError``/``OSError`` traceback,
- once the filler is removed, logging resumes and nothing logged meanwhile is lost.

Needs root (to mount a tmpfs); skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_mlops.errors import MlopsError

from ._harness import TERMINAL, integrity, source_dir, wait_until

SIZE = "16m"
RAW = re.compile(r"Traceback \(most recent call last\)|OperationalError|sqlite3\.|"
                 r"OSError|No space left on device")


class Disk:
    """The tmpfs: ``fill()`` takes every free byte, ``free()`` gives it back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.filler = folder / "filler.bin"

    def fill(self) -> int:
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
                try:
                    while True:
                        written += os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def left(self) -> int:
        stat = os.statvfs(self.folder)
        return stat.f_bavail * stat.f_frsize


@pytest.fixture
def disk(ws_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """The workspace directory on its own 16 MB tmpfs (unmounted at the end)."""
    from jupyter_mlops.api import _workspace

    from .conftest import cleanup

    if os.geteuid() != 0:
        pytest.skip("the full-disk scenario mounts a tmpfs, which needs root")
    ws_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs",
                              str(ws_dir)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [source_dir(), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "")
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    try:
        yield Disk(ws_dir)
    finally:
        cleanup(ws_dir)  # the jobs and controllers of this workspace
        for ws in list(_workspace._cache.values()):
            ws.store.close()
        _workspace._cache.clear()
        for _ in range(50):
            if subprocess.run(["umount", str(ws_dir)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)  # a process of ours still closing its files
        else:
            subprocess.run(["umount", "-l", str(ws_dir)], check=True)


class Outcomes:
    """What each attempt on the full disk gave: ok, a typed error, or a raw one."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def attempt(self, what: str, call: Callable[[], Any], timeout: float = 120) -> Any:
        """Call ``call`` in a thread (a hang is reported, not waited for forever)."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: BLE001 - recorded and judged below
                box["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self.rows.append({"what": what, "outcome": "hung", "error": f"no return in {timeout} s"})
            return None
        error = box.get("error")
        if error is None:
            self.rows.append({"what": what, "outcome": "ok"})
            return box.get("value")
        typed = isinstance(error, MlopsError)
        ours = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                for f in traceback.extract_tb(error.__traceback__)
                if f"{os.sep}jupyter_mlops{os.sep}" in f.filename]
        self.rows.append({"what": what, "outcome": "typed" if typed else "raw",
                          "error": f"{type(error).__module__}.{type(error).__name__}: "
                                   f"{str(error)[:200]}",
                          "raised_from": ours[-3:]})
        return None

    def untyped(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["outcome"] in ("raw", "hung")]

    def of(self, what: str) -> list[str]:
        return [r["outcome"] for r in self.rows if r["what"] == what]


TRIAL = """
import time, jupyter_mlops as mlops
for step in range(30):
    mlops.log("score", x * 1000 + step, step=step)
    time.sleep(0.1)
"""


def test_full_disk_gives_typed_errors_and_logging_resumes(disk: Disk, ws_dir: Path,
                                                          tmp_path: Path, figures: dict) -> None:
    import jupyter_mlops as mlops

    ws = mlops.workspace()
    outcomes = Outcomes()

    # -- logging -------------------------------------------------------------------------
    before, during = 2000, 20000
    with mlops.start_run("disk-log") as run:
        for i in range(before):
            mlops.log("x", float(i), step=i)
        mlops.flush()
        figures["filled_bytes_logging"] = disk.fill()
        for i in range(before, before + during):
            mlops.log("x", float(i), step=i)  # in memory: never fails
        for _ in range(3):
            outcomes.attempt("flush on a full disk", mlops.flush)
        disk.free()
        outcomes.attempt("flush after freeing", mlops.flush)
        # Logging resumes by itself too: the writer thread survived the full disk.
        last = before + during
        mlops.log("x", float(last), step=last)
        resumed = wait_until(lambda: last in set(run.metric_history("x")["step"]), 60,
                             "the writer thread to write again")
    history = run.metric_history("x")
    logged = set(history["step"].tolist())
    figures.update(points_logged=last + 1, points_stored=len(logged), run_status=run.status)

    # -- registration ----------------------------------------------------------------------
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(4 << 20))
    disk.fill()
    outcomes.attempt("register on a full disk", lambda: ws.models.register("m", source))
    versions_while_full = [m.ref for m in ws.models.list()]
    disk.free()
    model = outcomes.attempt("register after freeing", lambda: ws.models.register("m", source))

    # -- a sweep ------------------------------------------------------------------------------
    def start() -> Any:
        return ws.sweep(TRIAL, params={"x": "choice(1, 2, 3, 4)"}, metric="score",
                        sampler="grid", trials=4, concurrency=2, namespace={}, name="full")

    disk.fill()
    outcomes.attempt("sweep submitted on a full disk", start)
    disk.free()
    sweep = outcomes.attempt("sweep submitted after freeing", start)
    assert sweep is not None, outcomes.rows
    wait_until(lambda: any(r["status"] == "running" and ws.get_run(r["id"]).metrics()
                           for r in sweep.trial_rows()), 120, "a trial to log")
    disk.fill()
    time.sleep(3)  # the trials, their runners and the controller meet the full disk
    disk.free()
    wait_until(lambda: sweep.status in TERMINAL, 300, "the sweep to end")
    rows = sweep.trial_rows()
    controller_log = ws_dir / "staging" / "sweeps" / sweep.id / "controller.log"
    controller_text = controller_log.read_text() if controller_log.exists() else ""
    raw_texts = {f"trial {r['trial_number']} error": r["error"] for r in rows
                 if r["error"] and RAW.search(r["error"])}
    if sweep.info()["error"] and RAW.search(sweep.info()["error"]):
        raw_texts["sweep error"] = sweep.info()["error"]
    if "Traceback (most recent call last)" in controller_text:
        raw_texts["controller.log"] = controller_text[-1500:]
    short_trials = {r["trial_number"]: len(ws.get_run(r["id"]).metric_history("score"))
                    for r in rows if r["status"] == "completed"}

    checks = integrity(ws_dir)
    figures.update(
        attempts=outcomes.rows, sweep_status=sweep.status,
        trial_statuses=sorted(r["status"] for r in rows),
        trials_with_all_points=sum(n == 30 for n in short_trials.values()),
        raw_tracebacks=len(raw_texts), integrity=checks,
        versions_while_full=versions_while_full, sweep_error=sweep.info()["error"],
        controller_log_tail=controller_text[-800:],
    )
    # Every violation is listed (not only the first), each one strict.
    problems = [f"untyped error or hang: {r}" for r in outcomes.untyped()]
    if "typed" not in outcomes.of("flush on a full disk"):
        problems.append(f"flush() on a full disk raised no typed error: "
                        f"{outcomes.of('flush on a full disk')}")
    if outcomes.of("flush after freeing") != ["ok"]:
        problems.append("flush() failed after the space was freed")
    if logged != set(range(last + 1)):
        problems.append(f"{last + 1 - len(logged)} logged points lost")
    if run.status != "completed":
        problems.append(f"the logging run ended {run.status}")
    if "typed" not in outcomes.of("register on a full disk"):
        problems.append("register on a full disk raised no typed error")
    if versions_while_full:
        problems.append(f"versions registered on a full disk: {versions_while_full}")
    if model is None or model.version != 1:
        problems.append("register after freeing did not give version 1")
    if "typed" not in outcomes.of("sweep submitted on a full disk"):
        problems.append("a sweep submitted on a full disk raised no typed error")
    problems += [f"raw traceback in the {where}: {text[-600:]}"
                 for where, text in raw_texts.items()]
    if sweep.status != "completed":
        problems.append(f"the sweep filled during its trials ended {sweep.status}: "
                        f"{sweep.info()['error']}")
    if sorted(r["status"] for r in rows) != ["completed"] * 4:
        problems.append(f"trial statuses {sorted(r['status'] for r in rows)}, "
                        "expected 4 completed")
    if not all(n == 30 for n in short_trials.values()):
        problems.append(f"completed trials missing points: {short_trials}")
    if checks != ["ok"]:
        problems.append(f"integrity_check: {checks}")
    assert not problems, "full disk:\n" + "\n".join(problems)
