"""The endpoint widget: status, URL, requests, latency p50/p99, errors and the log tail,
live while the endpoint serves; a static HTML/text form for everywhere without widgets."""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as w

from .._format import fmt_latency, fmt_time
from ..store import ENDPOINT_ACTIVE, Backend
from . import _static

LOG_LINES = 12


def endpoint_html(row: dict[str, Any], log_tail: str) -> str:
    """The endpoint as HTML (the widget's view, and its static form)."""
    stats = row.get("stats") or {}
    url = (row.get("url") or "") + "/score"
    figures = [("requests", stats.get("requests", 0)), ("errors", stats.get("errors", 0)),
               ("latency p50", fmt_latency(stats.get("p50"))),
               ("latency p99", fmt_latency(stats.get("p99")))]
    cells = "".join(
        f"<td style='padding:2px 14px 2px 0;white-space:nowrap'>"
        f"<div style='font-size:85%;color:#666'>{label}</div>"
        f"<div style='font-size:120%'>{html.escape(str(value))}</div></td>"
        for label, value in figures)
    error = row.get("error")
    error_html = (f"<pre style='color:#c62828;max-height:8em;overflow:auto;margin:4px 0'>"
                  f"{html.escape(error)}</pre>" if error else "")
    auth = "key (Authorization: Bearer …)" if row.get("key_hash") else "none"
    return (
        "<div class='mlops-endpoint' style='font-family:var(--jp-ui-font-family,sans-serif)'>"
        f"<div style='white-space:nowrap;overflow:hidden;text-overflow:ellipsis'>"
        f"<b>{html.escape(row['name'])}</b> {_static.badge(row['status'])} "
        f"serving <b>{html.escape(row['model_name'])}:{row['model_version']}</b> "
        f"({html.escape(row['entry_name'])}) · updated {fmt_time(row.get('updated_at'))}</div>"
        f"<div style='margin:4px 0'><code>POST {html.escape(url)}</code> · auth: {auth}</div>"
        f"<table style='border-collapse:collapse'><tr>{cells}</tr></table>"
        f"{error_html}"
        f"<pre style='margin:4px 0 0 0;font-size:12px;max-height:14em;overflow:auto;"
        f"background:#f7f7f7;padding:4px'>{html.escape(log_tail) or '<i>no log yet</i>'}</pre>"
        "</div>")


class EndpointWidget(w.VBox):
    """A live view of one endpoint; polls the store while the endpoint is active."""

    def __init__(self, backend: Backend, endpoint_id: str, poll_interval: float = 1.0,
                 start: bool = True):
        self.backend, self.endpoint_id = backend, endpoint_id
        self.poll_interval = poll_interval
        self.row: dict[str, Any] = {}
        self.log_tail = ""
        self.view = w.HTML()
        self.delete_button = w.Button(description="Delete", icon="trash",
                                      layout=w.Layout(width="100px"))
        self.delete_button.on_click(self._on_delete)
        self._delete = threading.Event()
        self._stop = threading.Event()
        super().__init__([self.view, self.delete_button],
                         layout=w.Layout(border="1px solid #ddd", padding="6px"))
        self.add_class("mlops-endpoint-widget")
        self.refresh()
        self._thread: threading.Thread | None = None
        if start and not self.finished:
            self._thread = threading.Thread(target=self._follow, daemon=True,
                                            name=f"mlops-endpoint-{endpoint_id}")
            self._thread.start()

    @property
    def finished(self) -> bool:
        return self.row.get("status") not in ENDPOINT_ACTIVE

    def refresh(self) -> None:
        self.row = self.backend.endpoint_row(self.endpoint_id)
        lines = self.backend.endpoints.logs(self.endpoint_id, limit=LOG_LINES)
        self.log_tail = "\n".join(text for _, text, _ in lines)
        with self.hold_sync():
            self.view.value = endpoint_html(self.row, self.log_tail)
            self.delete_button.layout.display = "none" if self.finished else ""

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                if self._delete.is_set():
                    from ..serving import stop

                    self._delete.clear()
                    with self.hold_sync():
                        self.delete_button.description = "Deleting"
                        self.delete_button.disabled = True
                    stop(self.backend, self.endpoint_id)
                self.refresh()
                if self.finished:
                    return
            except Exception as exc:  # the view must survive a store that is away
                self.view.value = (f"<pre style='color:#c62828'>the view could not read the "
                                   f"store: {html.escape(str(exc))}</pre>")
                self._stop.wait(5.0)

    def _on_delete(self, _button: Any) -> None:
        # A callback only asks; the poller (the one writer of this view's state) acts.
        self._delete.set()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        super().close()

    def static_text(self) -> str:
        stats = self.row.get("stats") or {}
        return (f"endpoint {self.row['name']} {self.row['status']} "
                f"{self.row['model_name']}:{self.row['model_version']} "
                f"POST {self.row.get('url') or ''}/score · {stats.get('requests', 0)} requests, "
                f"{stats.get('errors', 0)} errors, p50 {fmt_latency(stats.get('p50'))}, "
                f"p99 {fmt_latency(stats.get('p99'))} (as of {time.strftime('%H:%M:%S')})")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = self.static_text()
        bundle["text/html"] = endpoint_html(self.row, self.log_tail)
        return bundle
