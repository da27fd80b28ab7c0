"""jupyter-mlops: train, sweep, register and deploy models without leaving the notebook.

>>> import jupyter_mlops as mlops
>>> ws = mlops.workspace()
>>> with mlops.start_run("try", experiment="demo") as run:
...     mlops.log("accuracy", 0.93)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import (
    Conflict,
    InvalidInput,
    MlopsError,
    NotFound,
    RunFailed,
    SchemaTooNew,
    WorkspaceError,
)
from .tracking import (
    current_run,
    flush,
    log,
    log_image,
    log_params,
    outputs_dir,
    should_stop,
    start_run,
)
from .workspace import Run, Workspace, WorkspaceConfig, workspace

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


def dataset(name: str) -> Path:
    """The local path of dataset ``name`` for a run's code: in a run started with
    ``--dataset pets:2``, ``mlops.dataset("pets")`` is that version's path; elsewhere the
    registry's version (``"pets"`` = latest, ``"pets:2"``), recorded as an input of the
    current run if there is one."""
    from .registry import dataset as _dataset  # imported on first use: keeps imports fast

    return _dataset(name)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlops``: register the magics (imported only now)."""
    from .magics import MlopsMagics

    ipython.register_magics(MlopsMagics)
