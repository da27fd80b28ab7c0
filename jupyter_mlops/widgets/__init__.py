"""Notebook views of the workspace: the live run widget, the sweep leaderboard, the runs
table, the registry, targets and endpoint tables. Each takes the ``store.Backend`` and an
id, and reads the store from one thread, its poller.

Names are imported on first use (PEP 562): the REST server uses the series cache and the
downsampling without loading ipywidgets and bqplot, and only a shown sweep imports Optuna.
"""

from .._lazy import lazy_names

_LAZY = {
    "finalize": "_display", "in_kernel": "_display", "show_live": "_display",
    "show_run_widget": "_display", "minmax_downsample": "_downsample", "RunFeed": "_feed",
    "SeriesCache": "_history", "RunWidget": "_run_widget", "RunsTable": "_runs_table",
    "EndpointWidget": "_endpoint_widget", "SweepWidget": "_sweep_widget",
    "RegistryTable": "_tables", "TargetsTable": "_tables",
}

__all__ = ["EndpointWidget", "RegistryTable", "RunFeed", "RunWidget", "RunsTable",
           "SeriesCache", "SweepWidget", "TargetsTable", "finalize", "in_kernel",
           "minmax_downsample", "show_live", "show_run_widget"]

__getattr__ = lazy_names(__name__, _LAZY)
