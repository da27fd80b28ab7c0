"""Shared helpers of the fault suite (issue 10): scale, figures, processes, store checks.

Every scenario drives real job processes, kernels and sweep controllers, breaks them on
purpose (SIGKILL, a full disk, kernel restarts) and then checks the workspace store from
the outside. Waits are on conditions with generous deadlines (``wait_until``); the times a
scenario reports are measurements, never assertions.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

import jupyter_mlops

from ..conftest import wait_until

__all__ = ["ACTIVE", "TERMINAL", "Figures", "child_env", "integrity", "kill", "kill_tree",
           "percentiles", "report", "source_dir", "stored_runs", "wait_until"]

TERMINAL = ("completed", "failed", "canceled", "pruned", "lost")
ACTIVE = ("queued", "starting", "running")
REPORT_ENV = "MLOPS_FAULT_REPORT"


def source_dir() -> str:
    """The folder holding the jupyter_mlops under test (children must import the same)."""
    return str(Path(jupyter_mlops.__file__).resolve().parents[1])


def child_env(workspace_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a helper process: this workspace, this source tree, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_MLOPS_")}
    env["JUPYTER_MLOPS_WORKSPACE"] = str(workspace_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_dir(), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def percentiles(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, p50, p99 and max (nearest rank), rounded to milliseconds."""
    data = sorted(values)
    if not data:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return round(data[max(0, math.ceil(q * len(data)) - 1)], 3)

    return {"n": len(data), "p50": rank(0.50), "p99": rank(0.99), "max": round(data[-1], 3)}


class Figures(dict):
    """The figures of one scenario; ``report()`` prints them and appends a JSON line."""

    def __init__(self, scenario: str, soak: bool):
        super().__init__(scenario=scenario, mode="soak" if soak else "quick")
        self._started = time.monotonic()

    def report(self) -> None:
        self["duration_s"] = round(time.monotonic() - self._started, 1)
        report(dict(self))


def report(figures: dict[str, Any]) -> None:
    """Print a scenario's figures (shown by ``pytest -s``) and append them as one JSON line
    to the file named by ``MLOPS_FAULT_REPORT``, if set."""
    line = json.dumps(figures, sort_keys=False, default=str)
    print(f"\n[fault-report] {line}", flush=True)
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# -- processes ------------------------------------------------------------------------------


def kill(pid: int | None) -> bool:
    """SIGKILL one process; False if it was already gone."""
    if not pid:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def family(pid: int | None) -> list[psutil.Process]:
    """A process and its descendants (children first), or [] when it is gone."""
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int | None) -> list[int]:
    """SIGKILL a process and all its descendants at once (no one gets to clean up)."""
    procs = family(pid)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in procs]


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the store, read from outside the product ----------------------------------------------


def database(workspace_dir: Path) -> Path:
    return Path(workspace_dir) / "mlops.db"


def integrity(workspace_dir: Path) -> list[str]:
    """``PRAGMA integrity_check`` of the workspace database, by a plain sqlite3 connection."""
    conn = sqlite3.connect(database(workspace_dir), timeout=30)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def stored_runs(workspace_dir: Path) -> list[dict[str, Any]]:
    """Every run row as stored (no ``lost`` derived by a reader)."""
    conn = sqlite3.connect(database(workspace_dir), timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs")]
    finally:
        conn.close()


def open_workspace_elsewhere(workspace_dir: Path) -> subprocess.CompletedProcess:
    """Open the workspace in a fresh process (which runs the reaper once, as documented)."""
    return subprocess.run(
        [sys.executable, "-c", "import jupyter_mlops as m; m.workspace()"],
        env=child_env(workspace_dir), capture_output=True, text=True, timeout=120)
