"""Shared fixtures: every test gets its own workspace directory, found through the env var."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import jupyter_mlops.tracking as tracking
from jupyter_mlops.api import _workspace

from ._postgres import PostgresCluster, running_cluster

HERE = Path(__file__).parent

# Runs start cold in the suite: warm starts (on by default) would leave an agent per test's
# workspace for its idle time. tests/test_agent.py (and the S3 warm test) turn them on.
os.environ["JUPYTER_MLOPS_WARM"] = "0"


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here because pytest reads options only from the rootdir conftest; used by tests/faults.
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the fault suite (tests/faults) at the full counts of issue 10")


@pytest.fixture
def ws_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh workspace directory that ``mlops.workspace()`` resolves to."""
    folder = tmp_path / "ws"
    monkeypatch.setenv("JUPYTER_MLOPS_WORKSPACE", str(folder))
    monkeypatch.delenv("JUPYTER_MLOPS_DATABASE_URL", raising=False)
    monkeypatch.delenv("JUPYTER_MLOPS_ARTIFACT_URL", raising=False)
    monkeypatch.delenv(tracking.ENV_RUN_ID, raising=False)
    monkeypatch.chdir(tmp_path)
    yield folder
    for ws in list(_workspace._cache.values()):
        ws.store.close()
    _workspace._cache.clear()


@pytest.fixture
def ws(ws_dir: Path):
    import jupyter_mlops as mlops

    return mlops.workspace()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on loopback for the whole session (tests/_postgres.py)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_name(request: pytest.FixtureRequest, ws_dir: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs twice: on the default SQLite workspace, and with
    JUPYTER_MLOPS_DATABASE_URL naming a fresh database of the throwaway PostgreSQL cluster."""
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres")
        monkeypatch.setenv("JUPYTER_MLOPS_DATABASE_URL", cluster.new_database())
    return request.param


@pytest.fixture
def any_ws(backend_name: str):
    """``ws`` on SQLite and on PostgreSQL (see ``backend_name``)."""
    import jupyter_mlops as mlops

    return mlops.workspace()


def make_notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """Write a notebook whose code cells are ``cells`` (and a tagged parameters cell)."""
    nb_cells = []
    if parameters is not None:
        nb_cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb_cells += [new_code_cell(src) for src in cells]
    nb = new_notebook(
        cells=nb_cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    nbformat.write(nb, path)
    return path


def wait_until(predicate: Callable[[], object], timeout: float = 60, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy (a functional wait, not a timing
    assertion: the bound is generous and only stops a broken test from hanging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 180):
    """Run ``jupyter mlops ...`` as a real subprocess (through the jupyter launcher)."""
    import subprocess

    return subprocess.run(
        ["jupyter", "mlops", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )


PYTHON = sys.executable
