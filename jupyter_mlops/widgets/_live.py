"""The one writer of a live view, and the pair of outputs every view leaves in a notebook.

Every view (run, sweep, runs table, registry tables) keeps its state in widget traits, and
exactly one thread writes them: the view's poller. It reads the store a few times a second
while there is something to follow, and otherwise sleeps until a callback asks it for
something. Callbacks (buttons, dropdowns; they run on a subshell thread while a cell blocks)
never set traits themselves: they ``request(...)`` an action, which the poller runs next.

A view is shown as two outputs (``show_live``):

1. the widget itself (``application/vnd.jupyter.widget-view+json``, with an empty
   ``text/plain``), and
2. its static form (``text/html`` + ``text/plain``: tables and a PNG of the charts), with a
   display id. The poller replaces it in place when the view has finished, so a notebook saved
   at any time after the end holds the final state, without waiting for another cell to run.

Why two outputs: JupyterLab renders one MIME type per output, and prefers the widget view
whenever the notebook is trusted; when the widget's model is gone (kernel restarted, notebook
reopened) ipywidgets' renderer writes "Error displaying widget: model not found" and never
falls back to the ``text/html`` beside it. The static output carries a small stylesheet
that hides itself while the widget beside it is alive (``.mlops-live``), and hides that error
text (or "Loading widget...": any text-only widget output) when it is not, so JupyterLab and
Notebook 7 show the live view *or* the static one, never both and never the error. Renderers
without widgets (nbconvert, GitHub, papermill output) show the static output and an empty line
for the widget.
"""

from __future__ import annotations

import html
import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Needs CSS :has() (Chromium 105+, Firefox 121+, Safari 15.4+), which cannot nest. Scoped to
# the output right after a widget output, so the static forms of other cells are untouched. A
# widget renderer's node is the output without a data-mime-type (JupyterLab 4 sets it on the
# others); without a live view inside, it holds only "Loading widget..." or the error.
FALLBACK_CSS = (
    "<style>"
    ".jp-OutputArea-child:has(.mlops-live)+.jp-OutputArea-child:has(.mlops-static){display:none}"
    ".jp-OutputArea-child:has(>.jp-OutputArea-output:not([data-mime-type])):not(:has(.mlops-live))"
    ":has(+.jp-OutputArea-child .mlops-static){display:none}"
    "</style>"
)


shown: deque[Any] = deque(maxlen=50)  # the views displayed last (tools and tests find them)


class LiveView:
    """Mixin for an ``ipywidgets`` view whose traits only its poller thread writes.

    Subclasses define ``refresh()`` (read the store, set traits), ``finished`` (nothing more
    to follow), ``static_html()`` and ``static_text()``, and show errors with ``show_error``.
    """

    poll_interval: float = 1.0
    _static_handle: Any = None

    def _init_live(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._final_sent = self._final_sending = False
        self._thread_lock = threading.Lock()
        self.add_class("mlops-live")

    @property
    def finished(self) -> bool:  # pragma: no cover - each view says
        raise NotImplementedError

    def refresh(self) -> None:  # pragma: no cover - each view says
        raise NotImplementedError

    def show_error(self, text: str) -> None:  # pragma: no cover - each view says
        raise NotImplementedError

    # -- the poller ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller (once): it follows the view until it has finished, then waits
        for requests."""
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                if self._stop.is_set():
                    return
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"mlops-{type(self).__name__}")
                self._thread.start()

    @property
    def following(self) -> bool:
        """True while the poller reads the store on its own (not only on request)."""
        return self._thread is not None and self._thread.is_alive() and not self.finished

    def request(self, action: Callable[[], None]) -> None:
        """Ask the poller to run ``action`` (from a callback: never set traits there)."""
        self._requests.put(action)
        self._wake.set()
        self.start()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            idle = self.finished and self._requests.empty()
            self._wake.wait(None if idle else self.poll_interval * (2 ** min(failures, 4)))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while True:
                    try:
                        action = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    action()
                self.refresh()
                failures = 0
            except Exception:  # shown in the view; this thread never prints
                failures += 1
                self.show_error("the view could not read the store:\n"
                                + traceback.format_exc(limit=3))
            if self.finished:
                self.send_final()

    def stop(self) -> None:
        """Stop the poller (what the view follows goes on)."""
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        super().close()  # type: ignore[misc]

    # -- output ---------------------------------------------------------------------------

    def static_bundle(self) -> dict[str, str]:
        return {"text/html": (f"{FALLBACK_CSS}<div class='mlops-static'>"
                              f"{self.static_html()}</div>"),
                "text/plain": self.static_text()}

    def send_final(self) -> None:
        """Replace the static output with the final state (once; from the poller, or from
        the main thread when a cell waited for the end)."""
        if self._static_handle is None or self._final_sent or self._final_sending:
            return
        self._final_sending = True
        self._static_handle.update(self.static_bundle(), raw=True)
        self._final_sent = True  # only now: a waiting cell returns once the update is out

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Used where a frontend asks for one bundle (e.g. an Output widget): the widget, and
        # the static form for renderers without widgets.
        bundle = super()._repr_mimebundle_(**kwargs) or {}  # type: ignore[misc]
        bundle.update(self.static_bundle())
        return bundle

    def _ipython_display_(self) -> None:
        show_live(self)


def error_html(text: str) -> str:
    return (f"<pre style='color:#c62828;max-height:10em;overflow:auto;margin:2px 0'>"
            f"{html.escape(text)}</pre>")


def show_live(view: Any) -> Any:
    """Display a view as its widget plus its static form (see the module docstring); the
    poller replaces the static form once the view has finished. Returns the static form's
    display handle."""
    from IPython.display import display

    widget_bundle = super(LiveView, view)._repr_mimebundle_() or {}
    display({WIDGET_MIME: widget_bundle[WIDGET_MIME], "text/plain": ""}, raw=True)
    view._final_sent = view.finished  # the static form sent now is already the final one
    view._static_handle = display(view.static_bundle(), raw=True, display_id=True)
    shown.append(view)
    view.start()
    return view._static_handle
