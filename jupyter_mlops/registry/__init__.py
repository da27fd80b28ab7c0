"""Model registry, versioned datasets, lineage and run comparison.

``ws.models`` and ``ws.datasets`` (the facade's subclasses of these) are the entry points;
``ws.lineage(model="mnist:3")`` tells what made a model; ``mlops.dataset("pets")`` (in
``tracking``) gives a run its data. These services receive the ``store.Backend``. SQL lives in
``store/_registry_store.py``; this package handles files, hashes, profiles and views.

Names are imported on first use (PEP 562), so ``jupyter mlops runs ls`` and job start-up
don't pay for the registry they don't use.
"""

from __future__ import annotations

from .._lazy import lazy_names

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

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return __all__
