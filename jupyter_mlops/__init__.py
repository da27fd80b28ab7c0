"""jupyter-mlops: train, sweep, register and deploy models without leaving the notebook.

>>> import jupyter_mlops as mlops
>>> ws = mlops.workspace()
>>> with mlops.start_run("try", experiment="demo") as run:
...     mlops.log("accuracy", 0.93)
"""

from __future__ import annotations

from typing import Any

from ._lazy import lazy_names
from .errors import (
    Conflict,
    InvalidInput,
    MlopsError,
    NotFound,
    RunFailed,
    SchemaTooNew,
    WorkspaceBusy,
    WorkspaceCorrupt,
    WorkspaceError,
    WorkspaceFull,
    WorkspaceReadOnly,
    WorkspaceUnreachable,
)
from .serving._entry import model_dir

# Imported on first use (PEP 562), so a process that needs only a part — an endpoint's
# worker calling model_dir(), a job's kernel before its first log() — does not pay for the
# store (SQLAlchemy) up front.
_LAZY = {
    "Run": "api", "Workspace": "api", "workspace": "api", "Endpoint": "api",
    "WorkspaceConfig": "store",
    **{name: "tracking" for name in (
        "current_run", "dataset", "flush", "log", "log_image", "log_params", "outputs_dir",
        "should_stop", "start_run")},
}
__getattr__ = lazy_names(__name__, _LAZY)

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "Endpoint",
    "InvalidInput",
    "MlopsError",
    "NotFound",
    "Run",
    "RunFailed",
    "SchemaTooNew",
    "Workspace",
    "WorkspaceBusy",
    "WorkspaceConfig",
    "WorkspaceCorrupt",
    "WorkspaceError",
    "WorkspaceFull",
    "WorkspaceReadOnly",
    "WorkspaceUnreachable",
    "__version__",
    "current_run",
    "dataset",
    "flush",
    "load_ipython_extension",
    "log",
    "log_image",
    "log_params",
    "model_dir",
    "outputs_dir",
    "should_stop",
    "start_run",
    "workspace",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlops``: register the magics (imported only now)."""
    from .magics import MlopsMagics

    ipython.register_magics(MlopsMagics)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The REST API as a jupyter_server extension (enabled on install by the file in
    ``etc/jupyter/jupyter_server_config.d``). Imported only when the server loads it."""
    from .server import MlopsApp

    return [{"module": "jupyter_mlops.server", "app": MlopsApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab sidebar (``jupyter labextension develop`` reads this)."""
    return [{"src": "labextension", "dest": "jupyter-mlops"}]


def __dir__() -> list[str]:
    return __all__
