"""jupyter-mlops: train, sweep, register and deploy models without leaving the notebook.

>>> import jupyter_mlops as mlops
>>> ws = mlops.workspace()
>>> with mlops.start_run("try", experiment="demo") as run:
...     mlops.log("accuracy", 0.93)
"""

from __future__ import annotations

from typing import Any

from .api import Run, Workspace, workspace
from .errors import (
    Conflict,
    InvalidInput,
    MlopsError,
    NotFound,
    RunFailed,
    SchemaTooNew,
    WorkspaceError,
)
from .store import WorkspaceConfig
from .tracking import (
    current_run,
    dataset,
    flush,
    log,
    log_image,
    log_params,
    outputs_dir,
    should_stop,
    start_run,
)

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "InvalidInput",
    "MlopsError",
    "NotFound",
    "Run",
    "RunFailed",
    "SchemaTooNew",
    "Workspace",
    "WorkspaceConfig",
    "WorkspaceError",
    "__version__",
    "current_run",
    "dataset",
    "flush",
    "load_ipython_extension",
    "log",
    "log_image",
    "log_params",
    "outputs_dir",
    "should_stop",
    "start_run",
    "workspace",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlops``: register the magics (imported only now)."""
    from .magics import MlopsMagics

    ipython.register_magics(MlopsMagics)
