"""Showing views in a notebook (see ``_live`` for the pair of outputs each view leaves)."""

from __future__ import annotations

import time
from typing import Any

from ..store import Backend
from ._live import show_live, shown
from ._run_widget import RunWidget

__all__ = ["finalize", "in_kernel", "show_live", "show_run_widget", "shown"]


def in_kernel() -> bool:
    """True in a Jupyter kernel (a frontend may render widgets), False in a terminal shell."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_run_widget(backend: Backend, run_id: str) -> tuple[RunWidget, Any]:
    """Display a live RunWidget; returns it and the display handle of its static form."""
    widget = RunWidget(backend, run_id)
    return widget, show_live(widget)


def finalize(widget: Any, handle: Any = None, timeout: float = 15.0) -> None:
    """After a cell waited for the end: let the view's poller catch up and replace the static
    output with the final state before the cell returns (papermill keeps only what arrives
    while the cell runs)."""
    if getattr(widget, "_static_handle", None) is None:
        return
    widget.request(lambda: None)  # wakes the poller for one more read
    deadline = time.monotonic() + timeout
    while not widget._final_sent and time.monotonic() < deadline:
        time.sleep(0.05)
