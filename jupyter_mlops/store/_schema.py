"""Tables of the workspace database.

Timestamps are float seconds since the epoch (portable, cheap to compare). A metric whose
``value`` is NULL is NaN: SQLite turns a bound NaN into NULL, and ``log`` refuses ``None``,
so NULL can mean nothing else. The schema itself changes only through the Alembic
migrations in ``migrations/versions``; these definitions are what queries are written
against and must match the newest migration (a test checks that).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# The newest migration's revision. Kept here, not read from the scripts at every open: alembic
# imports and parses them in 0.2 s, which a notebook's first %%train would wait for. A test
# checks it against the scripts; a new migration changes it.
HEAD_REVISION = "0008"

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere metrics need 64 bits.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # notebook | cell | inline
    sa.Column("source", sa.Text, nullable=True),  # notebook path, or None
    sa.Column("target", sa.String(64), nullable=True),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("progress", sa.JSON, nullable=True),
    sa.Column("environment", sa.JSON, nullable=True),
    sa.Column("cancel_requested_at", sa.Float, nullable=True),
    sa.Column("parent_id", sa.String(32), nullable=True, index=True),
    # {"slots": ["gpu:0"], "cuda_visible_devices": "0", "kernel_pid": 123}  (migration 0002)
    sa.Column("resources", sa.JSON, nullable=True),
    # a trial of a sweep (migration 0003)
    sa.Column("sweep_id", sa.String(32), nullable=True, index=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    # why a stop was requested, in words: "canceled by request", or a pruner's verdict
    sa.Column("stop_reason", sa.Text, nullable=True),
    # listings: newest first, overall and per experiment, paged by (created_at, id) (0008)
    sa.Index("ix_runs_created_id", "created_at", "id"),
    sa.Index("ix_runs_experiment_created_id", "experiment_id", "created_at", "id"),
)

sweeps = sa.Table(
    "sweeps",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # space, metric, goal, sampler, trials, concurrency, policy, target, gpus, code/notebook
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("cancel_requested_at", sa.Float, nullable=True),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("key", sa.String(250), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("wall_time", sa.Float, nullable=False),
    # 1 where value is -0.0: SQLite's REAL affinity would read it back as 0.0 (0006)
    sa.Column("negative_zero", sa.SmallInteger, nullable=True),
    sa.Index("ix_metrics_run_key", "run_id", "key", "id"),
    sa.Index("ix_metrics_run_id", "run_id", "id"),  # a widget's poll after an id (0005)
)

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("stream", sa.String(8), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("wall_time", sa.Float, nullable=False),
    sa.Index("ix_logs_run", "run_id", "id"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# -- model registry and datasets (migration 0004) ------------------------------------------
# A version's number comes from ``last_version`` of its parent row, incremented in the same
# transaction that inserts the version: numbers are never reused, even after a delete, so
# "mnist:3" always means the same content.

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),  # of the file manifest
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("file_count", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # file | folder
    sa.Column("root_name", sa.String(255), nullable=False),  # the file's or folder's name
    sa.Column("storage", sa.String(1024), nullable=False),  # folder under the artifact root
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=True, index=True),
    sa.Column("source", sa.Text, nullable=False),  # where the files were taken from
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
)

model_files = sa.Table(
    "model_files",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
)

model_aliases = sa.Table(  # "production", "staging": at most one version per alias and model
    "model_aliases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

dataset_versions = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),  # the recorded location (path or fsspec URL)
    sa.Column("storage", sa.String(1024), nullable=True),  # snapshot folder when copy=True
    sa.Column("sha256", sa.String(64), nullable=False),
    # files:bytes:newest mtime of a local reference; re-hashed when it differs (see Dataset.path)
    sa.Column("fingerprint", sa.String(128), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("file_count", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # file | folder
    sa.Column("profile", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_dataset_version"),
)

run_inputs = sa.Table(  # dataset versions a run read
    "run_inputs",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("dataset_version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"),
              primary_key=True, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# -- endpoints (migration 0007) ------------------------------------------------------------

endpoints = sa.Table(  # a model version served over HTTP under a stable name and URL
    "endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    # starting | ready | failed | lost | stopped
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),  # a snapshot of the entry script's source
    sa.Column("entry_name", sa.String(255), nullable=False),
    # bumped by a redeploy; the server swaps to it, then sets served_revision
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("served_revision", sa.Integer, nullable=True),
    sa.Column("bind_host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer, nullable=True),
    sa.Column("url", sa.String(1024), nullable=True),
    sa.Column("key_hash", sa.String(64), nullable=True),  # sha256 of the key; None: no auth
    sa.Column("config", sa.JSON, nullable=False),  # cores, memory, replicas, limits
    sa.Column("environment", sa.JSON, nullable=True),
    sa.Column("stats", sa.JSON, nullable=True),  # requests, errors, latency p50/p99
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("stop_requested_at", sa.Float, nullable=True),
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

endpoint_logs = sa.Table(
    "endpoint_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("endpoint_id", sa.String(32), sa.ForeignKey("endpoints.id"), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("wall_time", sa.Float, nullable=False),
    sa.Index("ix_endpoint_logs_endpoint", "endpoint_id", "id"),
)

# -- the change feed (migration 0008) ------------------------------------------------------
# One row per change readers follow (a run created or changing status, a registry change, an
# endpoint's status); ``id`` is the cursor. Written in the transaction of the change itself,
# so a reader never sees a change without its event or the reverse. Metric points have no
# events (logging is hot): the feed reports new points from the metrics ids themselves.

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # run.created, run.status, model.registered..
    sa.Column("subject", sa.String(255), nullable=False),  # a run, sweep or endpoint id; a name
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("wall_time", sa.Float, nullable=False),
)
