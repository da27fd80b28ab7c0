"""Jobs: a run is a notebook executed by papermill in its own process, writing to the store."""

from .._fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before nbformat is imported: see _fastimport

from ._spec import JobSpec, job_dir  # noqa: E402
from ._submit import launch_detached, read_notebook, submit_notebook  # noqa: E402

__all__ = ["JobSpec", "job_dir", "launch_detached", "read_notebook", "submit_notebook"]
