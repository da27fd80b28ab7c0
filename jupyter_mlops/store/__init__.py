"""The workspace store: the single source of truth that jobs write and every view reads.

The bottom layer: schema, migrations, SQL, artifacts, configuration. It imports nothing of
jupyter-mlops above it (``lint-imports`` checks). Services receive a ``Backend``.
"""

from ._artifacts import ArtifactStore, check_served_path, clean_relpath
from ._backend import Backend
from ._config import (
    ENV_HEADLESS,
    ENV_JOB_DIR,
    ENV_OUTPUTS_DIR,
    ENV_RUN_ID,
    ENV_SCHEMA_CHECKED,
    UNWRITTEN_FILE,
    WorkspaceConfig,
    WorkspaceLocation,
    load_config,
    load_file_config,
    resolve_location,
)
from ._endpoint_store import ENDPOINT_ACTIVE, ENDPOINT_STATUSES, EndpointStore
from ._liveness import HOSTNAME, as_read, job_gone, stale_heartbeat
from ._registry_store import RegistryStore
from ._store import ACTIVE, ALL_STATUSES, DATA_ERRORS, TERMINAL, Store, database_error, new_run_id

__all__ = [
    "ACTIVE",
    "ALL_STATUSES",
    "DATA_ERRORS",
    "ENDPOINT_ACTIVE",
    "ENDPOINT_STATUSES",
    "ENV_HEADLESS",
    "ENV_JOB_DIR",
    "ENV_OUTPUTS_DIR",
    "ENV_RUN_ID",
    "ENV_SCHEMA_CHECKED",
    "HOSTNAME",
    "TERMINAL",
    "UNWRITTEN_FILE",
    "ArtifactStore",
    "Backend",
    "EndpointStore",
    "RegistryStore",
    "Store",
    "WorkspaceConfig",
    "WorkspaceLocation",
    "as_read",
    "check_served_path",
    "clean_relpath",
    "database_error",
    "job_gone",
    "load_config",
    "load_file_config",
    "new_run_id",
    "resolve_location",
    "stale_heartbeat",
]
