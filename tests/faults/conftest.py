"""Fixtures of the fault suite: quick by default, the issue's full counts with ``--soak``.

(``--soak`` itself is declared in ``tests/conftest.py``: pytest reads ``pytest_addoption``
only from the rootdir conftest and plugins.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._harness import Figures, kill_tree, source_dir, stored_runs

SOAK_TIMEOUT = 3 * 3600  # seconds per test under --soak (pyproject's 300 s is for quick runs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--soak"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT))


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def figures(request: pytest.FixtureRequest, soak: bool) -> Iterator[Figures]:
    """The scenario's figures; reported at teardown, also when an assertion failed."""
    found = Figures(request.node.name, soak)
    yield found
    found.report()


@pytest.fixture
def fault_ws(ws_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh workspace whose job processes import the jupyter_mlops under test; at the
    end every process its runs and sweeps recorded (runners, kernels, controllers) is
    killed, so a failing scenario leaves nothing behind."""
    import jupyter_mlops as mlops

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [source_dir(), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "")  # CPU slots only, nvidia-smi not asked
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    ws = mlops.workspace()
    try:
        yield ws
    finally:
        cleanup(ws_dir)


def cleanup(ws_dir: Path) -> None:
    """Kill what the workspace's runs and sweeps recorded as their processes."""
    import sqlite3

    if not (ws_dir / "mlops.db").exists():
        return
    pids: set[int] = set()
    try:
        for row in stored_runs(ws_dir):
            pids.add(row.get("pid") or 0)
            resources = row.get("resources")
            if resources:
                import json

                pids.add((json.loads(resources) or {}).get("kernel_pid") or 0)
        conn = sqlite3.connect(ws_dir / "mlops.db", timeout=30)
        try:
            pids.update(r[0] or 0 for r in conn.execute("SELECT pid FROM sweeps"))
        finally:
            conn.close()
    except sqlite3.Error:
        pass
    pids.discard(0)
    pids.discard(os.getpid())
    for pid in pids:
        if _ours(pid, ws_dir):
            kill_tree(pid)


def _ours(pid: int, ws_dir: Path) -> bool:
    """Only a process of this workspace (its env names it): never a stranger with a reused
    pid."""
    import psutil

    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return env.get("JUPYTER_MLOPS_WORKSPACE") == str(ws_dir)
