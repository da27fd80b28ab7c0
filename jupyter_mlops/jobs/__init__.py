"""Jobs: a run is a notebook executed by papermill in its own process, writing to the store.

This package also owns what happens to runs whose processes are gone (``reap``) and the one
way to stop a run (``cancel_run``). Names are imported on first use (PEP 562): opening a
workspace runs the reaper, which must not pay for nbformat and papermill.
"""

from __future__ import annotations

from .._fastimport import skip_slow_optional_imports
from .._lazy import lazy_names

skip_slow_optional_imports()  # before nbformat is imported: see _fastimport

_WHERE = {
    "CarryError": "_cell",
    "restore_carried": "_cell",
    "save_outputs": "_cell",
    "JobSpec": "_spec",
    "read_notebook": "_submit",
    "submit_cell": "_submit",
    "submit_notebook": "_submit",
    "cancel_run": "_control",
    "reap": "_control",
    "watch": "_control",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return __all__
