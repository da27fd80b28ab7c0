"""The API facade: what users, the magics, the CLI and the REST server hold.

``Workspace`` composes the services (compute, jobs, registry, sweeps, widgets) over one
``store.Backend``; ``Run``, ``Sweep``, ``Model`` and ``Dataset`` are handles that read the
store on every access. The registry and sweep handles are imported on first use (PEP 562),
so ``import jupyter_mlops`` in a job's kernel stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._run import Run
from ._workspace import GateResult, Workspace, workspace

_LAZY = {"Dataset": "_registry", "DatasetRegistry": "_registry", "Model": "_registry",
         "ModelRegistry": "_registry", "Sweep": "_sweep"}

__all__ = ["Dataset", "DatasetRegistry", "GateResult", "Model", "ModelRegistry", "Run",
           "Sweep", "Workspace", "workspace"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
