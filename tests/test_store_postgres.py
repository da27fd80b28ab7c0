"""The workspace store on PostgreSQL only: what SQLite cannot show (a server to reach, row
locks between concurrent writers, machines whose clocks disagree). The rest of the store's
suite runs on both backends (``any_ws`` in test_store.py, test_registry.py, test_tracking.py).
All against a real throwaway PostgreSQL cluster (tests/_postgres.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from jupyter_mlops.errors import (
    WorkspaceBusy,
    WorkspaceError,
    WorkspaceReadOnly,
    WorkspaceUnreachable,
)
from jupyter_mlops.store import Backend, Store, WorkspaceConfig, new_run_id, resolve_location

from ._postgres import PostgresCluster, _free_port
from .conftest import cli


@pytest.fixture
def pg_url(postgres: PostgresCluster, ws_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh PostgreSQL database that the workspace (and child processes) resolve to."""
    url = postgres.new_database()
    monkeypatch.setenv("JUPYTER_MLOPS_DATABASE_URL", url)
    return url


def test_unreachable_server_is_one_line_naming_the_url_without_its_password(
        ws_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://ml:s3cret-pw@127.0.0.1:{port}/mlops"
    monkeypatch.setenv("JUPYTER_MLOPS_DATABASE_URL", url)
    with pytest.raises(WorkspaceUnreachable) as caught:
        Store(resolve_location(config=WorkspaceConfig()))
    message = str(caught.value)
    assert f"postgresql+psycopg://ml:***@127.0.0.1:{port}/mlops" in message
    assert "s3cret-pw" not in message and "\n" not in message
    assert "check that the server runs" in message
    done = cli("runs", "ls")  # the CLI: exit 2 and that one line, no traceback
    assert done.returncode == 2, done.stderr
    assert "cannot reach the workspace database server" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_missing_database_and_missing_rights_are_clear(postgres: PostgresCluster,
                                                       pg_url: str) -> None:
    missing = resolve_location(config=WorkspaceConfig())
    missing = missing.__class__(missing.directory, postgres.url("no_such_db"),
                                missing.artifact_url)
    with pytest.raises(WorkspaceError, match=r"does not exist.*createdb"):
        Store(missing)
    Store(resolve_location(config=WorkspaceConfig())).close()  # migrated by its owner
    admin = sa.create_engine(postgres.url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS visitor")
        conn.exec_driver_sql("CREATE ROLE visitor LOGIN")
    admin.dispose()
    loc = resolve_location(config=WorkspaceConfig())
    visitor = loc.__class__(loc.directory, pg_url.replace("postgres@", "visitor@"),
                            loc.artifact_url)
    with pytest.raises(WorkspaceReadOnly, match="cannot be written by this user"):
        Store(visitor)


def test_a_held_row_lock_is_waited_for_then_reported_busy(pg_url: str) -> None:
    config = WorkspaceConfig(busy_timeout=0.5)
    store = Store(resolve_location(config=config), config)
    run_id = new_run_id()
    store.create_run(run_id, "r", "e")
    other = sa.create_engine(pg_url)
    with other.connect() as conn, conn.begin():
        conn.exec_driver_sql(f"SELECT id FROM runs WHERE id = '{run_id}' FOR UPDATE")
        with pytest.raises(WorkspaceBusy, match="stayed locked by another writer"):
            store.merge_run_json(run_id, "tags", {"a": 1})
    other.dispose()
    # Once the lock is gone, the same write goes through.
    assert store.merge_run_json(run_id, "tags", {"a": 1}) == {"a": 1}
    store.close()


def test_concurrent_read_modify_writes_lose_nothing(pg_url: str, tmp_path: Path) -> None:
    """Writers run concurrently on PostgreSQL: the row locks keep every merge and every
    version number (SQLite would serialise them with BEGIN IMMEDIATE instead)."""
    import jupyter_mlops as mlops

    ws = mlops.workspace()
    run_id = new_run_id()
    ws.store.create_run(run_id, "r", "e")
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                ws.store.merge_run_json(run_id, "params", {f"w{n}_{i}": i})
            ws.models.register("shared", model, description=f"writer {n}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    params = ws.store.get_run_row(run_id)["params"]
    assert sorted(params) == sorted(f"w{n}_{i}" for n in range(6) for i in range(5))
    assert sorted(v.version for v in ws.models.list("shared")) == [1, 2, 3, 4, 5, 6]


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    code = ("from jupyter_mlops.store import Store, resolve_location\n"
            "s = Store(resolve_location()); print(s.schema_revision()); s.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    head = Store.head_revision()
    assert [out.strip() for out, _ in outputs] == [head] * 4
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(head,)]
    engine.dispose()


SKEWED_WRITER = """
import sys, time
real_time = time.time
time.time = lambda: real_time() + float(sys.argv[1])  # this node's clock is off
from jupyter_mlops.store import Backend
store = Backend.open().store
live, stopped = sys.argv[2], sys.argv[3]
for run_id in (live, stopped):
    store.create_run(run_id, "skewed", "e", status="queued", host="other-node", pid=1)
store.set_status(live, "running", started_at=time.time())
store.heartbeat(live)
store.update_run(live, heartbeat_at=time.time())
# A job that beat for the last time 100 s ago, by this node's clock: gone.
store.set_status(stopped, "running", heartbeat_at=time.time() - 100)
"""


@pytest.mark.parametrize("skew", [-7200.0, 7200.0])
def test_a_node_with_a_skewed_clock_never_makes_a_live_run_look_lost(
        pg_url: str, skew: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job on a node whose clock is 2 hours off beats through the store API; readers on
    this node (and one whose own clock is off the other way) see it running, and the
    reaper leaves it alone. A job that really stopped beating is still found lost."""
    from jupyter_mlops.jobs import reap

    live, stopped = new_run_id(), new_run_id()
    subprocess.run([sys.executable, "-c", SKEWED_WRITER, str(skew), live, stopped],
                   check=True, timeout=180)
    backend = Backend.open()
    assert backend.run_row(live)["status"] == "running"
    lost = backend.run_row(stopped)
    assert lost["status"] == "lost" and "no heartbeat for 1" in lost["error"]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - skew)  # a reader off, too
    assert backend.run_row(live)["status"] == "running"
    assert [r["id"] for r in backend.list_runs(status=["running"])] == [live]
    assert reap(backend) == [stopped]
    monkeypatch.undo()
    assert backend.store.get_run_row(live)["status"] == "running"
    assert backend.store.get_run_row(stopped)["status"] == "lost"
    backend.store.close()
