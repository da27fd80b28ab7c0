"""The workspace store: location, migrations, schema guard, SQLite settings, artifacts.

Tests taking ``any_ws`` (or ``backend_name``) run on SQLite and on a throwaway PostgreSQL
cluster (tests/_postgres.py); the SQLite-only ones (WAL, busy_timeout pragma, the file lock
of a first open) say so in their names."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from jupyter_mlops.errors import InvalidInput, NotFound, SchemaTooNew, WorkspaceError
from jupyter_mlops.store import (
    ArtifactStore,
    Store,
    WorkspaceConfig,
    new_run_id,
    resolve_location,
)
from jupyter_mlops.store._artifacts import clean_relpath
from jupyter_mlops.store._config import find_workspace_dir


def test_location_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".mlops").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JUPYTER_MLOPS_WORKSPACE", str(tmp_path / "elsewhere"))
    loc = resolve_location(config=WorkspaceConfig())
    assert loc.directory == (tmp_path / "elsewhere").resolve()
    assert loc.database_url == f"sqlite:///{loc.directory / 'mlops.db'}"


def test_location_walks_up_to_nearest_mlops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.delenv("JUPYTER_MLOPS_WORKSPACE", raising=False)
    (tmp_path / ".mlops").mkdir()
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert resolve_location(config=WorkspaceConfig()).directory == (tmp_path / ".mlops").resolve()
    # Without any .mlops above, the default is ./.mlops of the current directory.
    assert find_workspace_dir(Path("/")) == Path("/.mlops")


def test_location_from_traitlets_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTER_MLOPS_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jupyter_mlops_config.py").write_text(
        f"c.WorkspaceConfig.directory = {str(tmp_path / 'team')!r}\n"
        f"c.WorkspaceConfig.artifact_url = {str(tmp_path / 'blobs')!r}\n"
    )
    loc = resolve_location()
    assert loc.directory == (tmp_path / "team").resolve()
    assert loc.artifact_url == str(tmp_path / "blobs")


def test_sqlite_open_creates_schema_wal_and_head_revision(ws) -> None:
    store = ws.store
    assert store.schema_revision() == store.head_revision()
    db = sqlite3.connect(ws.location.directory / "mlops.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"experiments", "runs", "metrics", "logs", "artifacts", "alembic_version"} <= tables


def test_the_head_revision_is_the_newest_migration_script() -> None:
    """HEAD_REVISION (read at every open, without alembic) is the scripts' head."""
    from alembic.script import ScriptDirectory

    from jupyter_mlops.store._schema import HEAD_REVISION
    from jupyter_mlops.store._store import _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == HEAD_REVISION


def test_opening_a_current_workspace_does_not_import_alembic(ws) -> None:
    """A workspace already at the newest revision opens with one query: a notebook's first
    %%train does not wait for alembic's import (a new process, so nothing is imported yet)."""
    import subprocess
    import sys

    code = ("import sys, jupyter_mlops as mlops\n"
            "ws = mlops.workspace(); ws.runs()\n"
            "print('alembic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ws.location.directory.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_schema_module_matches_migrations(any_ws) -> None:
    """The table definitions queries use and the migrated database must not drift."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from jupyter_mlops.store._schema import metadata

    with any_ws.store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_database_from_newer_schema_is_refused_untouched(any_ws) -> None:
    loc = any_ws.location
    any_ws.store.create_run(new_run_id(), "keep-me", "exp")
    any_ws.store.close()
    db = sa.create_engine(loc.database_url)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNew, match="newer than this jupyter-mlops"):
        Store(loc)
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() \
            == "9999_future"
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
    db.dispose()


def test_a_schema_check_is_skipped_only_for_the_revision_and_database_a_parent_checked(
        any_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's kernel skips the schema check its job process made (ENV_SCHEMA_CHECKED), but
    only for the same revision of this package and the same database."""
    from jupyter_mlops.store import ENV_SCHEMA_CHECKED

    loc = any_ws.location
    stamp = any_ws.store.schema_stamp()
    head = any_ws.store.head_revision()
    assert stamp == f"{head} {loc.database_url}"
    any_ws.store.close()
    db = sa.create_engine(loc.database_url)
    with db.begin() as conn:  # a database this version would refuse, if it checked
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    db.dispose()
    monkeypatch.setenv(ENV_SCHEMA_CHECKED, stamp)
    Store(loc).close()  # trusted: not checked
    for other in (f"0000_older {loc.database_url}", f"{head} sqlite:////elsewhere/mlops.db"):
        monkeypatch.setenv(ENV_SCHEMA_CHECKED, other)
        with pytest.raises(SchemaTooNew, match="newer than this jupyter-mlops"):
            Store(loc)


def test_unwritable_workspace_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(WorkspaceError, match="not writable"):
        Store(resolve_location(blocker / "ws", config=WorkspaceConfig()))


def test_status_transitions_are_guarded(any_ws) -> None:
    ws = any_ws
    run_id = new_run_id()
    ws.store.create_run(run_id, "r", "exp")
    assert ws.store.set_status(run_id, "canceled", only_from=("queued",))
    # A job finishing a moment later must not turn a canceled run into a completed one.
    assert not ws.store.set_status(run_id, "completed")
    assert ws.store.get_run_row(run_id)["status"] == "canceled"


def test_get_run_by_id_name_and_prefix(any_ws) -> None:
    ws = any_ws
    first, second = "aaaa11112222", "aaaa33334444"
    ws.store.create_run(first, "resnet-small", "exp")
    ws.store.create_run(second, "resnet-large", "exp")
    assert ws.get_run(first).id == first
    assert ws.get_run("aaaa3").id == second
    assert ws.get_run("resnet-s").id == first
    with pytest.raises(NotFound, match="matches 2 runs"):
        ws.get_run("resnet")
    with pytest.raises(NotFound, match="no run matches"):
        ws.get_run("nothing-like-this")
    # Names are often reused: an exact name means the newest run of that name.
    ws.store.create_run("bbbb00000000", "resnet-small", "exp")
    assert ws.get_run("resnet-small").id == "bbbb00000000"


def test_runs_filters(any_ws) -> None:
    ws = any_ws
    ws.store.create_run("r1" + "0" * 10, "a", "exp1", tags={"team": "vision"})
    ws.store.create_run("r2" + "0" * 10, "b", "exp2", tags={"team": "nlp"}, status="completed")
    assert [r.name for r in ws.runs(experiment="exp1")] == ["a"]
    assert [r.name for r in ws.runs(status="completed")] == ["b"]
    assert [r.name for r in ws.runs(tags={"team": "nlp"})] == ["b"]
    with pytest.raises(InvalidInput, match="unknown status"):
        ws.runs(status="finished")
    frame = ws.runs_dataframe()
    assert set(frame["name"]) == {"a", "b"}
    assert "tag.team" in frame.columns


def test_stale_heartbeat_marks_run_lost(any_ws) -> None:
    ws = any_ws
    import time

    run_id = new_run_id()
    ws.store.create_run(run_id, "r", "exp", status="running", started_at=time.time() - 100,
                        heartbeat_at=time.time() - 100, host="another-host", pid=1)
    run = ws.get_run(run_id)
    assert run.status == "lost"
    assert "no heartbeat" in run.error


def test_dead_local_process_marks_run_lost(any_ws) -> None:
    ws = any_ws
    import socket
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run_id = new_run_id()
    ws.store.create_run(run_id, "r", "exp", status="running", started_at=time.time(),
                        heartbeat_at=time.time(), host=socket.gethostname(), pid=proc.pid)
    assert ws.get_run(run_id).status == "lost"


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "."])
def test_artifact_paths_stay_inside_the_run(bad: str) -> None:
    with pytest.raises(InvalidInput):
        clean_relpath(bad)


def test_artifact_write_is_atomic(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "art"))

    class Exploding:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk vanished")
            return b"x" * n

    with pytest.raises(OSError):
        store.put_stream("run1", "model.bin", Exploding())
    leftovers = list((tmp_path / "art").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []
    size, digest = store.put_bytes("run1", "dir/model.bin", b"hello")
    assert size == 5 and len(digest) == 64
    assert (tmp_path / "art" / "runs" / "run1" / "dir" / "model.bin").read_bytes() == b"hello"


def test_sqlite_busy_timeout_is_set(ws) -> None:
    with ws.store.engine.connect() as conn:
        timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert timeout == int(WorkspaceConfig().busy_timeout * 1000)
    with ws.store.read() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1


def test_a_first_open_waits_out_a_writer_holding_the_new_database(tmp_path: Path) -> None:
    """CI found a writer's first open of a brand-new workspace failing with "database is
    locked" while another process held the write lock past busy_timeout (a loaded machine).
    The open must queue behind it, not fail."""
    import threading
    import time

    config = WorkspaceConfig(busy_timeout=0.2)
    loc = resolve_location(tmp_path / "new", config=config)
    loc.directory.mkdir()
    holding, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def hold_the_write_lock() -> None:
        conn = sqlite3.connect(loc.directory / "mlops.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(60)
        released_at.append(time.monotonic())
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    assert holding.wait(60)
    # Held for several busy_timeouts: without the patient first open this fails.
    threading.Timer(5 * config.busy_timeout, release.set).start()
    store = Store(loc, config)
    opened_at = time.monotonic()
    holder.join(60)
    assert released_at and opened_at >= released_at[0]
    assert store.schema_revision() == store.head_revision()
    store.close()


def test_old_workspace_is_migrated_on_open_keeping_its_data(backend_name: str) -> None:
    from alembic import command

    from jupyter_mlops.store._store import _alembic_config

    loc = resolve_location(config=WorkspaceConfig())  # the workspace backend_name set up
    loc.directory.mkdir()
    assert loc.database_url.startswith(backend_name)
    engine = sa.create_engine(loc.database_url)
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.exec_driver_sql("INSERT INTO experiments (id, name, created_at) VALUES (1, 'e', 0)")
        conn.exec_driver_sql(
            "INSERT INTO runs (id, name, experiment_id, status, kind, params, tags, created_at)"
            " VALUES ('old1', 'old', 1, 'completed', 'inline', '{}', '{}', 0)"
        )
    engine.dispose()
    store = Store(loc)
    assert store.schema_revision() == store.head_revision()
    row = store.get_run_row("old1")
    assert row["name"] == "old" and row["resources"] is None


def test_importing_the_package_leaves_a_users_imports_alone() -> None:
    """The import speed-up of our own processes never hides a module from a user's code."""
    import subprocess
    import sys

    code = ("import sys, jupyter_mlops, jupyter_mlops.jobs, jupyter_mlops.sweeps\n"
            "hidden = [n for n in ('rfc3987_syntax', 'rfc3986_validator', 'isoduration')\n"
            "          if n in sys.modules and sys.modules[n] is None]\n"
            "print(hidden)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
