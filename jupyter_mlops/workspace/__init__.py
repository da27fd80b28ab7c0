"""The workspace store: the single source of truth that jobs write and every view reads."""

from ._artifacts import ArtifactStore
from ._config import WorkspaceConfig, WorkspaceLocation, resolve_location
from ._run import Run
from ._store import ACTIVE, ALL_STATUSES, TERMINAL, Store
from ._workspace import Workspace, new_run_id, workspace

__all__ = [
    "ACTIVE",
    "ALL_STATUSES",
    "TERMINAL",
    "ArtifactStore",
    "Run",
    "Store",
    "Workspace",
    "WorkspaceConfig",
    "WorkspaceLocation",
    "new_run_id",
    "resolve_location",
    "workspace",
]
