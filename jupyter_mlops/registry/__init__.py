"""Model registry, versioned datasets, lineage and run comparison.

``backend.models`` and ``backend.datasets`` are the entry points; ``backend.lineage(model="mnist:3")``
tells what made a model; ``mlops.dataset("pets")`` (in ``tracking``) gives a run its data. SQL lives in
``store/_registry_store.py``; this package handles files, hashes, profiles and views.

Names are imported on first use (PEP 562), so ``jupyter mlops runs ls`` and job start-up
don't pay for the registry they don't use.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ENV_DATASETS": "_datasets",
    "Dataset": "_datasets",
    "DatasetRegistry": "_datasets",
    "job_datasets_env": "_datasets",
    "pin_datasets": "_datasets",
    "RunDiff": "_diff",
    "code_snapshot": "_diff",
    "diff_runs": "_diff",
    "Lineage": "_lineage",
    "lineage": "_lineage",
    "Model": "_models",
    "ModelRegistry": "_models",
    "endpoints_serving": "_models",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
