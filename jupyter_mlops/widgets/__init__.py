"""Notebook views of the workspace: the live run widget and the runs table."""

from ._display import finalize, in_kernel, show_live, show_run_widget
from ._downsample import minmax_downsample
from ._feed import RunFeed
from ._run_widget import RunWidget
from ._runs_table import RunsTable

__all__ = ["RunFeed", "RunWidget", "RunsTable", "finalize", "in_kernel", "minmax_downsample",
           "show_live", "show_run_widget"]
