"""The API facade: what users, the magics, the CLI and the REST server hold.

``Workspace`` composes the services (compute, jobs, registry, sweeps, widgets) over one
``store.Backend``; ``Run``, ``Sweep``, ``Model`` and ``Dataset`` are handles that read the
store on every access. The registry and sweep handles are imported on first use (PEP 562),
so ``import jupyter_mlops`` in a job's kernel stays light.
"""

from __future__ import annotations

from .._lazy import lazy_names
from ._run import Run
from ._workspace import GateResult, Workspace, workspace

_LAZY = {"Endpoint": "_endpoint", "ScoringError": "_endpoint", "Dataset": "_registry",
         "DatasetRegistry": "_registry", "Model": "_registry",
         "ModelRegistry": "_registry", "Sweep": "_sweep"}

__all__ = ["Dataset", "DatasetRegistry", "Endpoint", "GateResult", "Model", "ModelRegistry", "Run",
           "ScoringError", "Sweep", "Workspace", "workspace"]

__getattr__ = lazy_names(__name__, _LAZY)
