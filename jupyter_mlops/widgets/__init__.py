"""Notebook views of the workspace: the live run widget, the sweep leaderboard and the runs
table. Each takes the ``store.Backend`` and an id, and reads the store from one thread."""

from ._display import finalize, in_kernel, show_live, show_run_widget
from ._downsample import minmax_downsample
from ._feed import RunFeed
from ._run_widget import RunWidget
from ._runs_table import RunsTable

__all__ = ["EndpointWidget", "RegistryTable", "RunFeed", "RunWidget", "RunsTable", "SweepWidget",
           "TargetsTable", "finalize", "in_kernel", "minmax_downsample", "show_live",
           "show_run_widget"]


def __getattr__(name: str) -> object:
    # The sweep view imports the sweep services (Optuna): only when a sweep is shown.
    if name == "EndpointWidget":
        from ._endpoint_widget import EndpointWidget

        return EndpointWidget
    if name in ("RegistryTable", "TargetsTable"):
        from . import _tables

        return getattr(_tables, name)
    if name == "SweepWidget":
        from ._sweep_widget import SweepWidget

        return SweepWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
