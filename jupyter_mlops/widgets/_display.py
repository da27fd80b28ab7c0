"""Showing views in a notebook, and leaving a static result behind when they finish.

A finished run's output should read well without a widget manager (papermill, nbconvert,
GitHub). The static form is part of the widget's mime bundle, but the bundle sent when the
cell ran is the one saved — so once a run ends, its display is re-sent (``update``) with the
final static form. That must happen on the main thread (output from threads is misrouted by
ipykernel 7), so it is done right after ``--wait`` returns, or by a ``post_run_cell`` hook
the next time any cell runs.
"""

from __future__ import annotations

from typing import Any

from ..store import Backend
from ._run_widget import RunWidget

_pending: list[tuple[Any, Any]] = []  # (a live view with .finished and .refresh(), handle)
_hook_installed = False


def in_kernel() -> bool:
    """True in a Jupyter kernel (a frontend may render widgets), False in a terminal shell."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_run_widget(backend: Backend, run_id: str) -> tuple[RunWidget, Any]:
    """Display a live RunWidget; returns it and its display handle."""
    widget = RunWidget(backend, run_id)
    return widget, show_live(widget)


def show_live(widget: Any) -> Any:
    """Display a live view; its final static form replaces it once it has finished."""
    from IPython.display import display

    handle = display(widget, display_id=True)
    _pending.append((widget, handle))
    _install_hook()
    return handle


def finalize(widget: Any, handle: Any) -> None:
    """Bring the view to the run's end and re-send its display with the final static form."""
    widget.refresh()
    if handle is not None:
        handle.update(widget)
    if (widget, handle) in _pending:
        _pending.remove((widget, handle))


def _finalize_finished(*_: Any) -> None:
    for widget, handle in list(_pending):
        if widget.finished:
            try:
                finalize(widget, handle)
            except Exception:  # a view must never break the user's next cell
                _pending.remove((widget, handle))


def _install_hook() -> None:
    global _hook_installed
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and not _hook_installed:
        shell.events.register("post_run_cell", _finalize_finished)
        _hook_installed = True
