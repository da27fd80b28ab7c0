"""``RunWidget``: a run's live view beside the cell — status, log, metrics, charts, files.

Live updates come from one background thread per widget that polls the store a few times a
second and sets traits inside ``hold_sync()``. A thread, not the kernel's event loop,
because the view must keep moving while the cell blocks (``%%train --wait``) and the event
loop does not run; setting traits from a thread is safe with ipykernel 7, printing is not,
so this thread never prints (errors go into the widget's own error line).
"""

from __future__ import annotations

import html
import re
import threading
from typing import Any

import bqplot as bq
import ipywidgets as w

from ..jobs import cancel_run
from ..store import Backend
from . import _static
from ._downsample import minmax_downsample
from ._feed import RunFeed
from ._live import LiveView, error_html

MAX_CHART_POINTS = 2000
PANE_LINES = 12  # log lines shown live; the whole log is one click away (Full log)


_INTERRUPT = re.compile(
    r"^-{20,}\nKeyboardInterrupt\s+Traceback.*\n(?:.*\n)*?KeyboardInterrupt:.*$", re.MULTILINE)
_WHERE = re.compile(r"Cell In\[(\d+)\], line (\d+)")


def canceled_log(text: str, notebook: bool = False) -> str:
    """A canceled run's log with the ``KeyboardInterrupt`` traceback its interrupt left
    replaced by one line saying where the code was stopped (a traceback reads like a crash).
    ``notebook``: the run is a notebook (cells numbered as the user knows them), not one
    ``%%train`` cell."""
    def where(match: re.Match[str]) -> str:
        found = _WHERE.search(match.group(0))  # the first frame is the user's code
        if not found:
            return "canceled by request"
        cell, line = found.groups()
        return (f"canceled by request at cell {cell}, line {line}" if notebook
                else f"canceled by request at line {line} of the cell")

    return _INTERRUPT.sub(where, text).rstrip("\n")


def _css_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


class _Chart:
    """One bqplot figure for one metric; built once, then only its line data changes."""

    def __init__(self, key: str):
        x_scale, y_scale = bq.LinearScale(), bq.LinearScale()
        self.line = bq.Lines(
            x=[], y=[], scales={"x": x_scale, "y": y_scale},
            tooltip=bq.Tooltip(fields=["x", "y"], labels=["step", key], formats=["", ".4g"]),
            colors=["#1565c0"], stroke_width=1.5,
        )
        self.x_axis = bq.Axis(scale=x_scale, label="step", tick_format=".4~g")
        self.figure = bq.Figure(
            marks=[self.line],
            axes=[self.x_axis,
                  bq.Axis(scale=y_scale, side="left", tick_format=".3~g")],
            title=key,
            interaction=bq.interacts.PanZoom(scales={"x": [x_scale], "y": [y_scale]}),
            fig_margin={"top": 36, "bottom": 36, "left": 56, "right": 12},
            layout=w.Layout(width="360px", height="240px"),
            title_style={"font-size": "13px"},
        )
        self.figure.add_class("mlops-chart")
        self.figure.add_class(f"mlops-chart-{_css_name(key)}")
        self.points_sent = 0

    def update(self, x: Any, y: Any) -> None:
        x, y = minmax_downsample(x, y, MAX_CHART_POINTS)
        low, high = float(x.min()), float(x.max())
        # Early in a run the axis would label fractional steps (0 0.2 0.4 ...): use whole ones.
        ticks = list(range(int(low), int(high) + 1)) if high - low <= 8 else []
        if list(self.x_axis.tick_values if self.x_axis.tick_values is not None else []) != ticks:
            self.x_axis.tick_values = ticks
        self.line.x, self.line.y = x, y
        self.points_sent = len(x)


class RunWidget(LiveView, w.VBox):
    """The live view of one run: ``RunWidget(backend, run_id)`` (or ``run.widget()``) shows
    its whole history, then follows it."""

    def __init__(self, backend: Backend, run_id: str, poll_interval: float = 0.2,
                 log_lines: int = 200, start: bool = True):
        self.backend, self.run_id = backend, run_id
        self.feed = RunFeed(backend, run_id, log_lines=log_lines)
        self.charts: dict[str, _Chart] = {}
        self._refresh_lock = threading.Lock()
        self._drawn_finished = False  # the run's end is read *and* drawn
        self.updates = 0  # how many times traits were pushed (≤ 1 / poll_interval per second)

        self.header_view = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
        self.header_view.add_class("mlops-run-status")
        self.cancel_button = w.Button(description="Cancel", icon="stop",
                                      layout=w.Layout(width="auto", min_width="96px"),
                                      button_style="warning")
        self.cancel_button.on_click(self._on_cancel)
        self.full_log_button = w.ToggleButton(description="Full log", icon="align-left",
                                              layout=w.Layout(width="auto", min_width="96px"))
        self.full_log_button.observe(self._on_full_log, names=["value"])
        self.log_view = w.HTML()
        self.log_view.add_class("mlops-run-log")
        self.metrics_view = w.HTML()
        self.metrics_view.add_class("mlops-run-metrics")
        self.chart_box = w.Box(layout=w.Layout(flex_flow="row wrap"))
        self.details_view = w.HTML()
        self.error_view = w.HTML()
        super().__init__(
            children=[
                w.HBox([self.header_view, self.cancel_button, self.full_log_button],
                       layout=w.Layout(align_items="center")),
                self.error_view, self.log_view,
                w.HBox([self.metrics_view, self.details_view],
                       layout=w.Layout(justify_content="space-between",
                                       align_items="flex-start")),
                self.chart_box,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.add_class("mlops-run-widget")
        self._init_live(poll_interval)
        self._log_shown = -1  # the log chunk last rendered, and in which mode
        self.refresh()  # the whole history, at once
        if start and not self.finished:
            self.start()

    @property
    def finished(self) -> bool:
        """The run has ended and the view shows its final state: readers that wait on this
        never see the end read but not yet drawn."""
        return self._drawn_finished

    # -- updating (the poller's) ----------------------------------------------------------

    def refresh(self) -> None:
        """Read what is new in the store and push it to the view."""
        with self._refresh_lock:
            changes = self.feed.poll()
            feed = self.feed
            with self.hold_sync():
                self.header_view.value = self._header_html()
                if changes.row or changes.artifacts:
                    self.details_view.value = self._details_html()
                    self.cancel_button.disabled = feed.finished
                    self.cancel_button.layout.display = "none" if feed.finished else ""
                    error = feed.row.get("error")
                    self.error_view.value = (
                        error_html(error) if error and feed.status not in ("completed",
                                                                           "canceled") else "")
                if changes.metrics:
                    self.metrics_view.value = _static.metrics_table(feed.latest, feed.counts())
                    for key in sorted(changes.metrics):
                        series = feed.series[key]
                        if series.n < 2:
                            continue
                        if key not in self.charts:
                            self.charts[key] = _Chart(key)
                            self.chart_box.children = [
                                self.charts[k].figure for k in sorted(self.charts)]
                        self.charts[key].update(series.x, series.y)
                if changes.log or changes.row:
                    self._render_log()
            self.updates += 1
            self._drawn_finished = feed.finished

    def _render_log(self) -> None:
        full = self.full_log_button.value
        if full:
            # One scrollable pane with the whole log instead of the tail (not both).
            text = self.display_log(self._whole_log())
            style = "max-height:24em;overflow:auto"
        else:
            # The pane shows the newest lines only: a scrolled pane would stay at its
            # top as it grows (notebook sanitizers drop the CSS that could anchor it).
            text = "\n".join(self.display_log(self.feed.log_text()).split("\n")[-PANE_LINES:])
            style = ""
        self.log_view.value = (f"<pre style='margin:0;font-size:12px;{style}'>"
                               f"{html.escape(text)}</pre>")

    def display_log(self, text: str) -> str:
        """The log as shown: a canceled run's interrupt traceback becomes one line."""
        if self.feed.status == "canceled":
            return canceled_log(text, notebook=self.feed.row.get("kind") == "notebook")
        return text

    def show_error(self, text: str) -> None:
        self.error_view.value = error_html(text)

    # -- callbacks (they run on a subshell thread while a cell blocks: only request) -------

    def _on_cancel(self, _button: Any) -> None:
        def cancel() -> None:
            self.cancel_button.description = "Canceling"
            self.cancel_button.disabled = True
            cancel_run(self.backend, self.run_id)

        self.request(cancel)

    def _on_full_log(self, _change: dict[str, Any]) -> None:
        self.request(self._render_log)

    def _whole_log(self) -> str:
        return "".join(text for _, _, text in self.backend.store.log_chunks(self.run_id))

    # -- rendering ------------------------------------------------------------------------

    def _header_html(self) -> str:
        row = self.feed.row
        slots = ", ".join((row.get("resources") or {}).get("slots", []))
        progress = row.get("progress") or {}
        where = html.escape(row.get("target") or "local") + (f" [{slots}]" if slots else "")
        # Cell k of n means something for a notebook run; a %%train job is one cell.
        cell = (f" · cell {progress['cell']}/{progress['cells']}"
                if progress and self.feed.status == "running" and row.get("kind") == "notebook"
                else "")
        return (f"<b>{html.escape(row.get('name', ''))}</b> <code>{self.run_id}</code> "
                f"{_static.badge(self.feed.status)} on {where} · {self.feed.elapsed()}{cell}")

    def _details_html(self) -> str:
        row = self.feed.row
        files = "".join(
            f"<tr><td><code>{html.escape(a['path'])}</code></td>"
            f"<td style='text-align:right'>{a['size']:,} B</td></tr>"
            for a in self.feed.artifacts)
        return (_static.kv_table("params", list(row.get("params", {}).items()))
                + _static.kv_table("tags", list(row.get("tags", {}).items()))
                + (f"<table><tr><th style='text-align:left'>artifacts</th><th></th></tr>"
                   f"{files}</table>" if files else ""))

    def static_html(self) -> str:
        feed = self.feed
        series = {k: (s.x, s.y) for k, s in feed.series.items()}
        return _static.run_html(feed.row, feed.latest, feed.counts(), series,
                                self.display_log(feed.log_text()), feed.artifacts,
                                feed.elapsed())

    def static_text(self) -> str:
        feed = self.feed
        return _static.run_text(feed.row, feed.latest, self.display_log(feed.log_text()),
                                feed.elapsed())

