"""Jobs: a run is a notebook executed by papermill in its own process, writing to the store."""

from .._fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before nbformat is imported: see _fastimport

from ._cell import CarryError, restore_carried, save_outputs  # noqa: E402
from ._spec import JobSpec, job_dir  # noqa: E402
from ._submit import (  # noqa: E402
    launch_detached,
    read_notebook,
    submit_cell,
    submit_notebook,
)

__all__ = [
    "CarryError",
    "JobSpec",
    "job_dir",
    "launch_detached",
    "read_notebook",
    "restore_carried",
    "save_outputs",
    "submit_cell",
    "submit_notebook",
]
