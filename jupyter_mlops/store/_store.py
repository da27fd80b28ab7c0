"""The workspace database: connection set-up, migrations and every read and write.

Thread-safety contract: one ``Store`` may be shared by threads of a process (SQLAlchemy's
pool hands each thread its own connection); several processes may open the same workspace
at once. SQLite runs in WAL mode, so readers never block writers; every write transaction
starts with ``BEGIN IMMEDIATE``, which takes the write lock up front and lets SQLite's busy
timeout queue writers instead of failing with "database is locked" on lock upgrade.

PostgreSQL (``JUPYTER_MLOPS_DATABASE_URL=postgresql+psycopg://...``) runs the same
migrations and queries. Writers run concurrently there, so every read-modify-write locks
what it changes (``SELECT ... FOR UPDATE`` of the row, or ``lock_name``: a transaction
advisory lock), which SQLite ignores (its immediate transaction already serialises them).
``lock_timeout`` plays the part of SQLite's busy timeout. Heartbeats are stamped in
database time (``now``), and readers judge them against database time (``clock``), so the
clocks of the machines sharing a workspace need not agree.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import (
    NotFound,
    SchemaTooNew,
    WorkspaceBusy,
    WorkspaceCorrupt,
    WorkspaceError,
    WorkspaceFull,
    WorkspaceReadOnly,
    WorkspaceUnreachable,
)
from . import _schema as t
from ._config import ENV_SCHEMA_CHECKED, WorkspaceConfig, WorkspaceLocation

TERMINAL = ("completed", "failed", "canceled", "pruned", "lost")
ACTIVE = ("queued", "starting", "running")
ALL_STATUSES = (*ACTIVE, *TERMINAL)

MetricRow = tuple[str, int, float, float]  # key, step, value, wall_time
RunKey = tuple[float, str]  # (created_at, id): where a keyset page of runs ends
# A first open waits up to this many busy_timeouts for another process's migration.
OPEN_PATIENCE = 6


def record_event(conn: Connection, kind: str, subject: str, **payload: Any) -> None:
    """Append a change to the feed (``events``), in the caller's write transaction: the
    change and its event commit together or not at all."""
    conn.execute(t.events.insert().values(kind=kind, subject=str(subject), payload=payload,
                                          wall_time=time.time()))


def new_run_id() -> str:
    """A new run id: 12 hex digits of a random UUID."""
    return uuid.uuid4().hex[:12]


def _make_engine(url: str, busy_timeout: float) -> Engine:
    if url.startswith("postgresql"):
        # A lock held longer than busy_timeout fails the statement (WorkspaceBusy), as on SQLite.
        options = f"-c lock_timeout={int(busy_timeout * 1000)}"
        return sa.create_engine(url, pool_pre_ping=True, connect_args={
            "connect_timeout": max(1, math.ceil(busy_timeout)), "options": options})
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": busy_timeout, "check_same_thread": False}
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("mlops_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Store:
    """All SQL of jupyter-mlops lives here; callers get plain dicts and tuples back."""

    def __init__(self, location: WorkspaceLocation, config: WorkspaceConfig | None = None):
        self.location = location
        self.config = config or WorkspaceConfig()
        if location.database_url.startswith("sqlite"):
            self._create_directory(location.directory)
        self.engine = _make_engine(location.database_url, self.config.busy_timeout)
        self._open_schema()

    # -- connection and schema ----------------------------------------------------------

    @staticmethod
    def _create_directory(directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # A uniquely named probe: processes opening the workspace at once must not
            # delete each other's probe.
            with tempfile.TemporaryFile(dir=directory, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise WorkspaceReadOnly(
                f"the workspace directory {directory} is not writable ({exc.strerror}); "
                "set JUPYTER_MLOPS_WORKSPACE to a directory you can write to"
            ) from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: commits on success, rolls back on any error."""
        with self.translated_errors(), self.engine.connect() as conn:
            conn = conn.execution_options(mlops_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot under WAL)."""
        with self.translated_errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Turn what the database or the file system says about the workspace (damaged,
        read-only, full, locked) into one ``WorkspaceError`` line naming the file and what to
        do. Data errors (constraint violations, bad values) pass through unchanged."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.DatabaseError) as exc:
            if isinstance(exc, _DATA_ERRORS) and not _sqlstate(exc).startswith(
                    _SERVER_TROUBLE):
                raise
            raise database_error(self.location, exc) from None
        except OSError as exc:
            raise database_error(self.location, exc) from None

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def now(self) -> Any:
        """The current time as a value to write: on PostgreSQL the database's clock (an SQL
        expression evaluated by the server), elsewhere this host's ``time.time()``."""
        if self.is_postgres:
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return time.time()

    def clock(self) -> float:
        """The time heartbeats are judged against: the database's clock on PostgreSQL (the
        workspace is shared by machines whose clocks may disagree), else ``time.time()``."""
        if not self.is_postgres:
            return time.time()
        with self.read() as conn:
            return float(conn.execute(sa.select(self.now())).scalar_one())

    def stamp_heartbeat(self, fields: dict[str, Any]) -> None:
        """Rewrite ``fields["heartbeat_at"]`` (a time on the writer's clock) into database
        time, keeping its age: ``time.time() - heartbeat_at`` ago by the database's clock.
        A writer whose clock is off by an hour still writes a fresh heartbeat."""
        beat = fields.get("heartbeat_at")
        if self.is_postgres and isinstance(beat, (int, float)):
            fields["heartbeat_at"] = self.now() - (time.time() - beat)

    @staticmethod
    def lock_run(conn: Connection, run_id: str) -> None:
        """Lock a run's row until the transaction ends (PostgreSQL; SQLite ignores it)."""
        conn.execute(sa.select(t.runs.c.id).where(t.runs.c.id == run_id).with_for_update())

    @staticmethod
    def lock_name(conn: Connection, name: str) -> None:
        """Serialise the transactions that lock the same ``name`` (a row that does not
        exist yet cannot be locked): a PostgreSQL transaction advisory lock; nothing on
        SQLite, whose write transactions are serialised already."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
                sa.func.hashtextextended(name, 0))))

    def _open_schema(self) -> None:
        """Migrate, waiting patiently for the lock: processes that open a brand-new workspace
        at once (a sweep's trials, several writers) queue behind the one creating the tables,
        however slow a loaded machine makes it, instead of failing their first open.

        A job's kernel skips the check when its job process, of the same version, has just
        done it on the same database (``ENV_SCHEMA_CHECKED``): a query and an alembic
        context less on every run's first ``mlops.log``."""
        if os.environ.get(ENV_SCHEMA_CHECKED) == self.schema_stamp():
            return
        deadline = time.monotonic() + OPEN_PATIENCE * self.config.busy_timeout
        while True:
            try:
                with self.translated_errors():
                    self._migrate()
                return
            except WorkspaceBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def schema_stamp(self) -> str:
        """This package's schema revision and this database: what ``ENV_SCHEMA_CHECKED``
        holds once a process has brought the database to that revision."""
        return f"{_head_revision()} {self.location.database_url}"

    def _migrate(self) -> None:
        """Bring the schema to the newest revision; refuse a database from the future.

        A database already at the newest revision costs one query: alembic is imported
        only to migrate (or to name what a newer database holds)."""
        head = _head_revision()

        def current_revision() -> str | None:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table("alembic_version"):
                    return None  # a new database
                return conn.execute(sa.text("SELECT version_num FROM alembic_version")
                                    ).scalar()

        with self._migration_lock(fcntl.LOCK_SH):  # never read a schema half migrated
            current = current_revision()
        if current == head:
            return
        from alembic import command  # imported before any lock is taken, not under it
        from alembic.script import ScriptDirectory

        config = _alembic_config()
        script = ScriptDirectory.from_config(config)
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise SchemaTooNew(
                f"the workspace database {self.location.database_url} has schema revision "
                f"{current!r}, newer than this jupyter-mlops understands (newest: {head!r}); "
                "upgrade jupyter-mlops (pip install -U jupyter-mlops)"
            )
        with self._migration_lock(fcntl.LOCK_EX):
            if current_revision() == head:  # another process migrated while we waited
                return
            with self.engine.connect() as conn:
                conn = conn.execution_options(mlops_write=True)
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()

    @contextmanager
    def _migration_lock(self, mode: int) -> Iterator[None]:
        """One process creates or migrates the tables (exclusive) while the others wait to
        read the schema revision (shared): a file lock beside a SQLite database; a session
        advisory lock on PostgreSQL."""
        if self.is_postgres:
            lock = "pg_advisory_lock" if mode == fcntl.LOCK_EX else "pg_advisory_lock_shared"
            with self.engine.connect() as conn:
                conn.execute(sa.select(getattr(sa.func, lock)(_MIGRATION_LOCK_KEY)))
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.select(getattr(sa.func, lock.replace("lock", "unlock", 1))(
                        _MIGRATION_LOCK_KEY)))
                    conn.commit()
            return
        if not self.location.database_url.startswith("sqlite"):
            yield
            return
        with open(self.location.directory / ".migrate.lock", "a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def head_revision() -> str:
        """The newest schema revision this jupyter-mlops knows."""
        return _head_revision()

    def schema_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()

    # -- experiments and runs -----------------------------------------------------------

    def experiment_id(self, conn: Connection, name: str) -> int:
        """The id of experiment ``name``, created if new. Race-free: when another writer
        creates the same name first, the insert's savepoint is rolled back and the row
        re-read (SQLite's immediate transactions already serialise this)."""
        select = sa.select(t.experiments.c.id).where(t.experiments.c.name == name)
        found = conn.execute(select).scalar()
        if found is not None:
            return int(found)
        try:
            with conn.begin_nested():
                result = conn.execute(
                    t.experiments.insert().values(name=name, created_at=time.time()))
                return int(result.inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return int(conn.execute(select).scalar_one())

    def experiments(self) -> list[dict[str, Any]]:
        runs = t.runs
        query = (
            sa.select(
                t.experiments.c.name,
                t.experiments.c.created_at,
                sa.func.count(runs.c.id).label("runs"),
            )
            .select_from(t.experiments.outerjoin(runs))
            .group_by(t.experiments.c.id)
            .order_by(t.experiments.c.name)
        )
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def create_run(self, run_id: str, name: str, experiment: str, **fields: Any) -> None:
        fields.setdefault("params", {})
        fields.setdefault("tags", {})
        fields.setdefault("status", "queued")
        fields.setdefault("kind", "inline")
        self.stamp_heartbeat(fields)
        with self.write() as conn:
            conn.execute(
                t.runs.insert().values(
                    id=run_id,
                    name=name,
                    experiment_id=self.experiment_id(conn, experiment),
                    created_at=time.time(),
                    **fields,
                )
            )
            record_event(conn, "run.created", run_id, status=fields["status"], name=name,
                         experiment=experiment)

    def delete_run(self, run_id: str) -> None:
        """Remove a run that never started (its submission failed half-way), with its rows."""
        with self.write() as conn:
            for table in (t.artifacts, t.metrics, t.logs, t.run_inputs):
                conn.execute(table.delete().where(table.c.run_id == run_id))
            if conn.execute(t.runs.delete().where(t.runs.c.id == run_id)).rowcount:
                record_event(conn, "run.deleted", run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.stamp_heartbeat(fields)
        with self.write() as conn:
            conn.execute(t.runs.update().where(t.runs.c.id == run_id).values(**fields))

    def merge_run_json(self, run_id: str, column: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into a JSON column (``params``, ``tags``, ``resources``) atomically."""
        col = t.runs.c[column]
        with self.write() as conn:
            # SQLite: the write transaction is BEGIN IMMEDIATE; PostgreSQL: a row lock.
            row = conn.execute(
                sa.select(col).where(t.runs.c.id == run_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no run with id {run_id!r}")
            merged = {**(row[0] or {}), **values}
            conn.execute(t.runs.update().where(t.runs.c.id == run_id).values({column: merged}))
            return merged

    def set_status(
        self, run_id: str, status: str, *, only_from: Sequence[str] = ACTIVE, **fields: Any
    ) -> bool:
        """Move a run to ``status`` unless it already left ``only_from``; True if it moved.

        Guarding on the current status makes endings race-free: a run that was canceled is
        not turned back into ``completed`` by a job finishing a moment later.
        """
        if status in TERMINAL:
            fields.setdefault("ended_at", time.time())
        if status in ("starting", "running"):
            fields.setdefault("heartbeat_at", time.time())
        self.stamp_heartbeat(fields)
        with self.write() as conn:
            result = conn.execute(
                t.runs.update()
                .where(t.runs.c.id == run_id, t.runs.c.status.in_(only_from))
                .values(status=status, **fields)
            )
            if result.rowcount == 1:
                record_event(conn, "run.status", run_id, status=status)
            return result.rowcount == 1

    def heartbeat(self, run_id: str) -> None:
        """Record that the job of ``run_id`` is alive."""
        with self.write() as conn:
            conn.execute(
                t.runs.update().where(t.runs.c.id == run_id).values(heartbeat_at=self.now())
            )

    def request_stop(self, run_id: str, reason: str) -> None:
        """Ask a run's job to stop (it reads this through ``cancel_requested``/``stop_request``)."""
        with self.write() as conn:
            conn.execute(
                t.runs.update()
                .where(t.runs.c.id == run_id, t.runs.c.cancel_requested_at.is_(None))
                .values(cancel_requested_at=time.time(), stop_reason=reason)
            )

    def stop_request(self, run_id: str) -> str | None:
        """The reason a stop was requested for the run, or None if none was."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(t.runs.c.cancel_requested_at, t.runs.c.stop_reason)
                .where(t.runs.c.id == run_id)
            ).first()
        if row is None or row[0] is None:
            return None
        return row[1] or "canceled by request"

    def cancel_requested(self, run_id: str) -> bool:
        with self.read() as conn:
            return bool(
                conn.execute(
                    sa.select(t.runs.c.cancel_requested_at).where(t.runs.c.id == run_id)
                ).scalar()
            )

    def _run_query(self) -> sa.Select:
        return sa.select(t.runs, t.experiments.c.name.label("experiment")).join(t.experiments)

    def get_run_row(self, run_id: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(self._run_query().where(t.runs.c.id == run_id)).first()
        return dict(row._mapping) if row else None

    def find_runs(self, ref: str) -> list[dict[str, Any]]:
        """Runs matching ``ref``: the run with that id; else the newest run with that exact
        name (names are often reused); else every run whose id or name starts with it."""
        return self._find_by_ref(self._run_query(), t.runs, ref)

    def _find_by_ref(self, query: sa.Select, table: sa.Table, ref: str
                     ) -> list[dict[str, Any]]:
        """Rows of ``table`` by exact id, else the newest with that exact name, else up to 50
        whose id or name starts with ``ref``. Each step is its own indexed query, so an exact
        name is found however many other rows share its prefix."""
        newest_first = query.order_by(table.c.created_at.desc())
        escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self.read() as conn:
            for exact in (table.c.id == ref, table.c.name == ref):
                row = conn.execute(newest_first.where(exact).limit(1)).first()
                if row is not None:
                    return [dict(row._mapping)]
            prefix = newest_first.where(sa.or_(
                table.c.id.like(escaped + "%", escape="\\"),
                table.c.name.like(escaped + "%", escape="\\"),
            )).limit(50)
            return [dict(r._mapping) for r in conn.execute(prefix)]

    def list_runs(
        self,
        experiment: str | None = None,
        status: str | Sequence[str] | None = None,
        tags: dict[str, Any] | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        before: RunKey | None = None,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run rows, newest first, filtered and paged in SQL (one query).

        ``before`` pages by keyset: only runs older than that (created_at, id) key, so a
        reader paging through a growing workspace sees each run once (new runs are newer
        than its first page) and each page costs the same however deep. ``text`` keeps runs
        whose name or parameters contain it (case-insensitive).
        """
        runs = t.runs
        query = self._run_query().order_by(runs.c.created_at.desc(), runs.c.id.desc())
        if before is not None:
            created, run_id = before
            query = query.where(sa.or_(runs.c.created_at < created, sa.and_(
                runs.c.created_at == created, runs.c.id < run_id)))
        if text:
            pattern = "%" + _escape_like(text) + "%"
            query = query.where(sa.or_(
                runs.c.name.ilike(pattern, escape="\\"),
                sa.cast(runs.c.params, sa.Text).ilike(pattern, escape="\\")))
        if experiment is not None:
            query = query.where(t.experiments.c.name == experiment)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            query = query.where(t.runs.c.status.in_(statuses))
        if parent_id is not None:
            query = query.where(t.runs.c.parent_id == parent_id)
        for key, value in (tags or {}).items():
            # JSON path access works on SQLite (json_extract) and PostgreSQL (->>) alike.
            query = query.where(t.runs.c.tags[str(key)].as_string() == str(value))
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def latest_metrics_many(self, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The latest value of every metric of each run: ``{run_id: {key: value}}``, in one
        query however many runs (for listings)."""
        if not run_ids:
            return {}
        m = t.metrics
        newest = (sa.select(sa.func.max(m.c.id)).where(m.c.run_id.in_(list(run_ids)))
                  .group_by(m.c.run_id, m.c.key))
        query = (sa.select(m.c.run_id, m.c.key, _VALUE).where(m.c.id.in_(newest))
                 .order_by(m.c.id))
        found: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
        with self.read() as conn:
            for run_id, key, value in conn.execute(query):
                found[run_id][key] = _nan_if_null(value)
        return found

    # -- sweeps ---------------------------------------------------------------------------

    def create_sweep(self, sweep_id: str, name: str, experiment: str, spec: dict[str, Any]
                     ) -> None:
        with self.write() as conn:
            conn.execute(t.sweeps.insert().values(
                id=sweep_id, name=name, experiment_id=self.experiment_id(conn, experiment),
                status="queued", spec=spec, created_at=time.time()))
            record_event(conn, "sweep.created", sweep_id, status="queued", name=name,
                         experiment=experiment)

    def update_sweep(self, sweep_id: str, **fields: Any) -> None:
        self.stamp_heartbeat(fields)
        with self.write() as conn:
            conn.execute(t.sweeps.update().where(t.sweeps.c.id == sweep_id).values(**fields))

    def set_sweep_status(self, sweep_id: str, status: str, *,
                         only_from: Sequence[str] = ACTIVE, **fields: Any) -> bool:
        if status in TERMINAL:
            fields.setdefault("ended_at", time.time())
        self.stamp_heartbeat(fields)
        with self.write() as conn:
            result = conn.execute(
                t.sweeps.update()
                .where(t.sweeps.c.id == sweep_id, t.sweeps.c.status.in_(only_from))
                .values(status=status, **fields))
            if result.rowcount == 1:
                record_event(conn, "sweep.status", sweep_id, status=status)
            return result.rowcount == 1

    def _sweep_query(self) -> sa.Select:
        return sa.select(t.sweeps, t.experiments.c.name.label("experiment")).join(t.experiments)

    def get_sweep_row(self, sweep_id: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(self._sweep_query().where(t.sweeps.c.id == sweep_id)).first()
        return dict(row._mapping) if row else None

    def find_sweeps(self, ref: str) -> list[dict[str, Any]]:
        """Sweeps whose id is ``ref``, else the newest of that name, else by prefix."""
        return self._find_by_ref(self._sweep_query(), t.sweeps, ref)

    def list_sweeps(self, experiment: str | None = None,
                    status: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = self._sweep_query().order_by(t.sweeps.c.created_at.desc())
        if experiment is not None:
            query = query.where(t.experiments.c.name == experiment)
        if status is not None:
            query = query.where(t.sweeps.c.status.in_(list(status)))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def sweep_trials(self, sweep_id: str) -> list[dict[str, Any]]:
        """The runs of a sweep, in trial order."""
        query = (self._run_query().where(t.runs.c.sweep_id == sweep_id)
                 .order_by(t.runs.c.trial_number, t.runs.c.created_at))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- metrics --------------------------------------------------------------------------

    def log_metrics(self, run_id: str, rows: Iterable[MetricRow]) -> int:
        """Insert a batch of metric points in one transaction; returns how many.

        NaN is stored as NULL (``metric_rows`` reads it back as NaN). On SQLite the rows go
        in as multi-row ``INSERT ... VALUES`` statements of ``_ROWS_PER_INSERT`` rows with
        the run id bound once: about twice the rate of one-row ``executemany``, and several
        times SQLAlchemy's insert of dicts (see benchmarks/logging.py).
        """
        rows = rows if isinstance(rows, (list, tuple)) else list(rows)
        if not rows:
            return 0
        with self.write() as conn:
            if self.engine.dialect.name == "sqlite":
                _insert_metrics_sqlite(conn, run_id, rows)
            elif self.is_postgres:
                _copy_metrics_postgres(conn, run_id, rows)
            else:
                conn.execute(
                    t.metrics.insert(),
                    [
                        {
                            "run_id": run_id,
                            "key": key,
                            "step": step,
                            "value": None if value != value else value,
                            "wall_time": wall_time,
                        }
                        for key, step, value, wall_time in rows
                    ],
                )
        return len(rows)

    def last_metric_steps(self, run_id: str) -> dict[str, int]:
        """The highest step of every key, so a resumed writer continues the numbering."""
        query = (
            sa.select(t.metrics.c.key, sa.func.max(t.metrics.c.step))
            .where(t.metrics.c.run_id == run_id)
            .group_by(t.metrics.c.key)
        )
        with self.read() as conn:
            return {key: int(step) for key, step in conn.execute(query)}

    def latest_metrics(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The last logged point of every key: ``{key: {"value", "step", "wall_time"}}``."""
        newest = (
            sa.select(sa.func.max(t.metrics.c.id))
            .where(t.metrics.c.run_id == run_id)
            .group_by(t.metrics.c.key)
        )
        query = sa.select(
            t.metrics.c.key, t.metrics.c.step, _VALUE, t.metrics.c.wall_time
        ).where(t.metrics.c.id.in_(newest))
        with self.read() as conn:
            return {
                key: {"value": _nan_if_null(value), "step": step, "wall_time": wall}
                for key, step, value, wall in conn.execute(query)
            }

    def metric_summaries(self, run_ids: Sequence[str], key: str) -> dict[str, dict[str, Any]]:
        """For each run that logged ``key``: its ``last`` value and ``last_step`` (the newest
        point) and the ``max`` and ``min`` of its values (NaN left out). Two queries however
        long the histories (a sweep's leaderboard asks this every second)."""
        if not run_ids:
            return {}
        m = t.metrics
        grouped = (sa.select(m.c.run_id, sa.func.max(m.c.id), sa.func.max(m.c.value),
                             sa.func.min(m.c.value))
                   .where(m.c.run_id.in_(list(run_ids)), m.c.key == key)
                   .group_by(m.c.run_id))
        with self.read() as conn:
            found = {run_id: {"id": newest, "max": _nan_if_null(hi), "min": _nan_if_null(lo)}
                     for run_id, newest, hi, lo in conn.execute(grouped)}
            newest = [entry["id"] for entry in found.values()]
            last = {i: (step, value) for i, step, value in conn.execute(
                sa.select(m.c.id, m.c.step, _VALUE).where(m.c.id.in_(newest)))}
        for entry in found.values():
            step, value = last[entry.pop("id")]
            entry["last_step"], entry["last"] = int(step), _nan_if_null(value)
        return found

    def metric_rows(
        self, run_id: str, key: str | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[tuple[int, str, int, float, float]]:
        """Metric points in logging order, from ``after_id`` on (for incremental readers)."""
        m = t.metrics
        query = (
            sa.select(m.c.id, m.c.key, m.c.step, _VALUE, m.c.wall_time)
            .where(m.c.run_id == run_id, m.c.id > after_id)
            .order_by(m.c.id)
        )
        if key is not None:
            query = query.where(m.c.key == key)
        if limit:
            query = query.limit(limit)
        with self.read() as conn:
            return [
                (i, k, s, _nan_if_null(v), w) for i, k, s, v, w in conn.execute(query)
            ]

    # -- logs -----------------------------------------------------------------------------

    def append_logs(self, run_id: str, chunks: Iterable[tuple[str, str, float]]) -> None:
        """Append ``(stream, text, wall_time)`` chunks of a run's output."""
        batch = [
            {"run_id": run_id, "stream": s, "text": text, "wall_time": w}
            for s, text, w in chunks
            if text
        ]
        if batch:
            with self.write() as conn:
                conn.execute(t.logs.insert(), batch)

    def log_chunks(self, run_id: str, after_id: int = 0, limit: int | None = None
                   ) -> list[tuple[int, str, str]]:
        query = (
            sa.select(t.logs.c.id, t.logs.c.stream, t.logs.c.text)
            .where(t.logs.c.run_id == run_id, t.logs.c.id > after_id)
            .order_by(t.logs.c.id)
        )
        if limit:
            query = query.limit(limit)
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(query)]

    # -- the change feed ------------------------------------------------------------------

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Changes after the cursor ``after_id``, oldest first (at most ``limit``)."""
        e = t.events
        query = (sa.select(e.c.id, e.c.kind, e.c.subject, e.c.payload, e.c.wall_time)
                 .where(e.c.id > after_id).order_by(e.c.id).limit(limit))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def feed_heads(self) -> tuple[int, int]:
        """The newest event id and the newest metric id: where a follower starts."""
        with self.read() as conn:
            newest_event = conn.execute(sa.select(sa.func.max(t.events.c.id))).scalar()
            newest_metric = conn.execute(sa.select(sa.func.max(t.metrics.c.id))).scalar()
        return int(newest_event or 0), int(newest_metric or 0)

    def metrics_since(self, after_id: int, upto_id: int) -> list[tuple[str, int, int]]:
        """``(run_id, newest metric id, points)`` of every run that logged points with a
        metric id in (``after_id``, ``upto_id``]: a range of the primary key, so nothing new
        costs one seek and a bounded range a bounded scan."""
        m = t.metrics
        query = (sa.select(m.c.run_id, sa.func.max(m.c.id), sa.func.count())
                 .where(m.c.id > after_id, m.c.id <= upto_id).group_by(m.c.run_id))
        with self.read() as conn:
            return [(run_id, int(newest), int(count))
                    for run_id, newest, count in conn.execute(query)]

    # -- artifacts ------------------------------------------------------------------------

    def record_artifact(self, run_id: str, path: str, size: int, sha256: str) -> None:
        with self.write() as conn:
            self.lock_run(conn, run_id)  # PostgreSQL: one recorder of the run's files at a time
            conn.execute(
                t.artifacts.delete().where(
                    t.artifacts.c.run_id == run_id, t.artifacts.c.path == path
                )
            )
            conn.execute(
                t.artifacts.insert().values(
                    run_id=run_id, path=path, size=size, sha256=sha256, created_at=time.time()
                )
            )

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        a = t.artifacts
        query = (
            sa.select(a.c.path, a.c.size, a.c.sha256, a.c.created_at)
            .where(a.c.run_id == run_id)
            .order_by(a.c.path)
        )
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def metric_rows_many(self, run_ids: Sequence[str], key: str, after_id: int = 0
                         ) -> list[tuple[int, str, int, float]]:
        """``(id, run_id, step, value)`` of one metric of several runs, in logging order,
        from ``after_id`` on: one query for a sweep's overlay chart, read incrementally."""
        if not run_ids:
            return []
        m = t.metrics
        query = (sa.select(m.c.id, m.c.run_id, m.c.step, _VALUE)
                 .where(m.c.run_id.in_(list(run_ids)), m.c.key == key, m.c.id > after_id)
                 .order_by(m.c.id))
        with self.read() as conn:
            return [(i, r, int(s), _nan_if_null(v)) for i, r, s, v in conn.execute(query)]


_MIGRATION_LOCK_KEY = 0x6D6C6F7073  # "mlops": the advisory lock of migrations on PostgreSQL
_ROWS_PER_INSERT = 249  # 1 + 4 x 249 = 997 bound parameters: under SQLite's smallest limit, 999


# Errors that say something about the rows written, not about the database: a writer may
# retry the rows one by one and drop only the bad one (see tracking.MetricWriter).
_DATA_ERRORS = (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError)
DATA_ERRORS = (*_DATA_ERRORS, OverflowError, TypeError, ValueError)


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE code of a PostgreSQL error ('' for other databases)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) or ""


# SQLSTATE classes that say the server cannot serve the workspace, whatever the rows: even
# when the driver files them as a data error (42501: permission denied is a ProgrammingError).
_SERVER_TROUBLE = ("08", "28", "3D", "42501", "25006", "53", "57", "58", "XX", "55P03",
                   "40P01", "40001")


def _shown_url(url: str) -> str:
    """The database URL as it may be shown: the password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _server_error(where: str, code: str, detail: str) -> WorkspaceError | None:
    """The one line for a PostgreSQL server failure, by its SQLSTATE (None: not one)."""
    text = detail.lower()
    if not code:  # a failed connection carries no SQLSTATE: the server said why in words
        if "database" in text and "does not exist" in text:
            code = "3D000"
        elif "authentication failed" in text or ("role" in text and "does not exist" in text) \
                or "pg_hba.conf" in text:
            code = "28000"
    if code.startswith("08") or (not code and "connection" in text):
        return WorkspaceUnreachable(
            f"cannot reach the workspace database server {where} ({detail}); check that the "
            "server runs and the host and port of JUPYTER_MLOPS_DATABASE_URL are right")
    if code.startswith("28"):
        return WorkspaceError(
            f"the workspace database server {where} refused the login ({detail}); check the "
            "user and password in JUPYTER_MLOPS_DATABASE_URL")
    if code == "3D000":
        return WorkspaceError(
            f"the workspace database {where} does not exist ({detail}); create it "
            "(createdb NAME) or fix the database name in JUPYTER_MLOPS_DATABASE_URL")
    if code in ("42501", "25006"):
        return WorkspaceReadOnly(
            f"the workspace database {where} cannot be written by this user ({detail}); "
            "grant it the rights on the database, or use another user in "
            "JUPYTER_MLOPS_DATABASE_URL")
    if code.startswith("53"):
        return WorkspaceFull(
            f"the workspace database server {where} is out of resources ({detail}); free "
            "disk space or connections on the server and try again")
    if code in ("55P03", "40P01", "40001"):
        return WorkspaceBusy(
            f"the workspace database {where} stayed locked by another writer ({detail}); "
            "try again, or raise WorkspaceConfig.busy_timeout")
    if code.startswith("XX"):
        return WorkspaceCorrupt(
            f"the workspace database {where} reports damaged data ({detail}); it was left "
            "untouched: restore it from a backup")
    if code.startswith(("57", "58")):
        return WorkspaceUnreachable(
            f"the workspace database server {where} stopped serving ({detail}); try again "
            "once it is back")
    return None


def database_error(location: WorkspaceLocation, exc: BaseException) -> WorkspaceError:
    """One line for a database or file-system failure of the workspace: what happened to
    which file (or server, its password hidden), and what to do. Nothing is touched to
    recover."""
    url = location.database_url
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if url.startswith("postgresql"):
        where = _shown_url(url)
        password = sa.engine.make_url(url).password
        if password:
            detail = detail.replace(str(password), "***")
        found = _server_error(where, _sqlstate(exc), detail)
        if found is not None:
            return found
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite") else _shown_url(url)
    text = detail.lower()
    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename or where
        text = {28: "database or disk is full", 13: "readonly", 30: "readonly",
                1: "readonly"}.get(exc.errno, text)
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return WorkspaceCorrupt(
            f"the workspace database {where} is damaged or not a SQLite database "
            f"({detail}); it was left untouched: restore it from a backup, or move it away "
            "to start an empty workspace there")
    if "disk is full" in text or "no space" in text:
        return WorkspaceFull(
            f"the disk holding the workspace {where} is full ({detail}); free some space and "
            "try again (runs keep what was already stored)")
    if "readonly" in text or "read-only" in text or "permission" in text:
        return WorkspaceReadOnly(
            f"the workspace {where} cannot be written by this user ({detail}); make the file "
            "and its folder writable (chmod u+w), or set JUPYTER_MLOPS_WORKSPACE to a folder "
            "you can write to")
    if "locked" in text or "busy" in text:
        return WorkspaceBusy(
            f"the workspace database {where} stayed locked by another process ({detail}); "
            "try again, or raise WorkspaceConfig.busy_timeout")
    if "unable to open" in text:
        return WorkspaceReadOnly(
            f"cannot open the workspace database {where} ({detail}); check that its folder "
            "exists and this user can read and write it, or set JUPYTER_MLOPS_WORKSPACE to "
            "another folder")
    return WorkspaceError(f"the workspace database {where} failed: {detail}")


def _metrics_insert_sql(rows: int) -> str:
    """``INSERT`` of ``rows`` metric points; parameter 1 is the run id, then 4 per point."""
    values = ",".join(
        f"(?1,?{4 * j + 2},?{4 * j + 3},?{4 * j + 4},?{4 * j + 5})" for j in range(rows)
    )
    columns = "run_id, key, step, value, wall_time"
    return f"INSERT INTO {t.metrics.name} ({columns}) VALUES {values}"


_INSERT_METRICS_MANY = _metrics_insert_sql(_ROWS_PER_INSERT)
_INSERT_METRIC_ONE = _metrics_insert_sql(1)
_INSERT_METRIC_FLAGGED = (f"INSERT INTO {t.metrics.name} "
                          "(run_id, key, step, value, wall_time, negative_zero) "
                          "VALUES (?, ?, ?, ?, ?, ?)")
# A metric value as stored: -0.0 where the point is flagged (see migration 0006).
_VALUE = sa.case((t.metrics.c.negative_zero == 1, sa.literal_column("-0.0")),
                 else_=t.metrics.c.value).label("value")


def _is_negative_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) < 0


def _insert_metrics_sqlite(conn: Connection, run_id: str, rows: Sequence[MetricRow]) -> None:
    """Insert metric points with as few SQLite statements (and Python work per row) as can be.

    NaN needs no conversion here: SQLite binds a NaN double as NULL (sqlite3_bind_double).
    """
    flat = list(chain.from_iterable(rows))  # key, step, value, wall_time, key, ...
    values = flat[2::4]
    if 0.0 in values and any(_is_negative_zero(v) for v in values):  # rare: -0.0 logged
        conn.exec_driver_sql(_INSERT_METRIC_FLAGGED, [
            (run_id, key, step, value, wall, 1 if _is_negative_zero(value) else None)
            for key, step, value, wall in rows])
        return
    full = len(rows) - len(rows) % _ROWS_PER_INSERT
    width = 4 * _ROWS_PER_INSERT
    if full:
        conn.exec_driver_sql(
            _INSERT_METRICS_MANY,
            [(run_id, *flat[i : i + width]) for i in range(0, 4 * full, width)],
        )
    if full < len(rows):  # the rest one row a statement: two statements in SQLite's cache
        conn.exec_driver_sql(
            _INSERT_METRIC_ONE,
            [(run_id, *flat[i : i + 4]) for i in range(4 * full, len(flat), 4)],
        )


def _copy_metrics_postgres(conn: Connection, run_id: str, rows: Sequence[MetricRow]) -> None:
    """Insert metric points on PostgreSQL with ``COPY ... FROM STDIN`` in the caller's
    transaction: several times an ``executemany`` of INSERTs. float8 keeps -0.0 itself (no
    ``negative_zero`` flag); NaN is stored as NULL, as on SQLite."""
    sql = f"COPY {t.metrics.name} (run_id, key, step, value, wall_time) FROM STDIN"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(sql) as copy:
            for key, step, value, wall in rows:
                copy.write_row((run_id, key, step, None if value != value else value, wall))
    except conn.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
        # As SQLAlchemy wraps the driver's errors (DataError for a step out of range...).
        raise sa.exc.DBAPIError.instance(sql, None, exc, conn.dialect.dbapi.Error) from None
    finally:
        cursor.close()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _nan_if_null(value: float | None) -> float:
    return math.nan if value is None else value


def _head_revision() -> str:
    return t.HEAD_REVISION


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return config

