"""Typed errors. Each message says what was wrong and what to do about it.

The CLI turns any ``MlopsError`` into a one-line message and exit code 2; magics turn them
into ``UsageError``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "InvalidInput",
    "MlopsError",
    "NotFound",
    "RunFailed",
    "SchemaTooNew",
    "WorkspaceBusy",
    "WorkspaceCorrupt",
    "WorkspaceError",
    "WorkspaceFull",
    "WorkspaceReadOnly",
    "WorkspaceUnreachable",
]


class MlopsError(Exception):
    """Base class of every error jupyter-mlops raises on purpose."""


class InvalidInput(MlopsError, ValueError):
    """The caller passed something malformed (a metric name, a parameter, a path)."""


class NotFound(MlopsError, LookupError):
    """A run, metric or artifact that was asked for does not exist."""


class Conflict(MlopsError):
    """The request clashes with the current state (e.g. deleting a model an endpoint serves)."""


class WorkspaceError(MlopsError):
    """The workspace cannot be opened or written (permissions, bad URL, locked)."""


class WorkspaceCorrupt(WorkspaceError):
    """The database file is damaged or is not a SQLite database; it is left as it is."""


class WorkspaceReadOnly(WorkspaceError):
    """The database, its folder or the artifact store cannot be written by this user."""


class WorkspaceFull(WorkspaceError):
    """The disk holding the workspace is full; writes succeed again once space is freed."""


class WorkspaceBusy(WorkspaceError):
    """Another process held the database lock for longer than ``busy_timeout``."""


class WorkspaceUnreachable(WorkspaceError):
    """The workspace's database server cannot be reached (down, wrong host or port)."""


class SchemaTooNew(WorkspaceError):
    """The database was migrated by a newer jupyter-mlops than this one."""


class RunFailed(MlopsError):
    """A run that was waited for ended in a state other than ``completed``."""
