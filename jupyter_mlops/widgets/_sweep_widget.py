"""``SweepWidget``: a live leaderboard of a sweep — progress, ranked trials with the reason
every stopped trial was stopped, params-vs-metric charts, and a trial's run view on demand."""

from __future__ import annotations

import base64
import html
import io
import math
import threading
from typing import Any

import bqplot as bq
import ipywidgets as w

from ..store import TERMINAL, Backend
from ..sweeps import SweepSpec, progress, summary_lines, sweep_row, trial_rows
from . import _static


def _numeric(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; categories as their index (with labels for the axis)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({repr(v) for v in values})
    return [float(labels.index(repr(v))) for v in values], labels


class SweepWidget(w.VBox):
    """The live leaderboard of a sweep: ``SweepWidget(backend, sweep_id)`` or
    ``sweep.widget()``."""

    def __init__(self, backend: Backend, sweep_id: str, poll_interval: float = 1.0,
                 start: bool = True):
        self.backend, self.sweep_id = backend, sweep_id
        self.poll_interval = poll_interval
        self.info = sweep_row(backend, sweep_id)
        self.spec: SweepSpec = SweepSpec(**self.info["spec"])
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.header_view = w.HTML()
        self.header_view.add_class("mlops-sweep-status")
        self.bar = w.IntProgress(min=0, max=self.spec.trials, layout=w.Layout(width="300px"))
        self.board = w.HTML(layout=w.Layout(max_height="24em", overflow="auto"))
        self.board.add_class("mlops-sweep-leaderboard")
        self.charts: dict[str, tuple[bq.Figure, bq.Scatter]] = {}
        self.chart_box = w.Box(layout=w.Layout(flex_flow="row wrap"))
        for name in list(self.spec.space)[:6]:
            xs, ys, cs = bq.LinearScale(), bq.LinearScale(), bq.ColorScale(scheme="viridis")
            dots = bq.Scatter(x=[], y=[], color=[], scales={"x": xs, "y": ys, "color": cs},
                              default_size=48, tooltip=bq.Tooltip(fields=["x", "y"],
                                                                   labels=[name, self.spec.metric]))
            figure = bq.Figure(marks=[dots], title=f"{self.spec.metric} by {name}",
                               axes=[bq.Axis(scale=xs, label=name),
                                     bq.Axis(scale=ys, side="left", tick_format=".3~g")],
                               fig_margin={"top": 36, "bottom": 40, "left": 56, "right": 12},
                               layout=w.Layout(width="320px", height="240px"))
            figure.add_class("mlops-sweep-chart")
            self.charts[name] = (figure, dots)
        self.chart_box.children = [f for f, _ in self.charts.values()]
        self.trial_picker = w.Dropdown(description="trial", options=[],
                                       layout=w.Layout(width="280px"))
        self.open_button = w.Button(description="Open run", icon="external-link")
        self.open_button.on_click(self._open_trial)
        self.trial_output = w.Output()
        super().__init__([w.HBox([self.header_view, self.bar]), self.board, self.chart_box,
                          w.HBox([self.trial_picker, self.open_button]), self.trial_output])
        self.add_class("mlops-sweep-widget")
        self.refresh()
        self._thread = None
        if start and not self.finished:
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> None:
        with self._lock:
            info = self.info = sweep_row(self.backend, self.sweep_id)
            self.status = info["status"]
            self.rows = trial_rows(self.backend, self.sweep_id, self.spec)
            counts = progress(self.rows, self.spec.trials)
            with self.hold_sync():
                self.header_view.value = (
                    f"<b>{html.escape(info['name'])}</b> <code>{info['id']}</code> "
                    f"{_static.badge(info['status'])} · {self.spec.goal} "
                    f"{html.escape(self.spec.metric)} · {counts['done']} done, "
                    f"{counts['running']} running, {counts['pruned']} pruned, "
                    f"{counts['failed']} failed of {counts['total']}")
                self.bar.value = counts["done"] + counts["pruned"] + counts["failed"]
                self.board.value = self.leaderboard_html()
                scored = [r for r in self.rows if r["final"] is not None
                          and not math.isnan(r["final"])]
                for name, (_figure, dots) in self.charts.items():
                    xs, labels = _numeric([r["params"].get(name) for r in scored])
                    dots.x, dots.y = xs, [r["final"] for r in scored]
                    dots.color = [r["final"] for r in scored]
                    if labels:
                        _figure.axes[0].tick_values = list(range(len(labels)))
                        _figure.axes[0].tick_format = ""
                options = [(f"{r['trial_number']}: {r['name']} ({r['status']})", r["id"])
                           for r in self.ranked()]
                if options != list(self.trial_picker.options):
                    self.trial_picker.options = options

    def ranked(self) -> list[dict[str, Any]]:
        maximize = self.spec.goal == "maximize"

        def key(row: dict[str, Any]) -> tuple[int, float]:
            value = row["final"]
            if value is None or math.isnan(value):
                return (1, 0.0)
            return (0, -value if maximize else value)

        return sorted(self.rows, key=key)

    def leaderboard_html(self) -> str:
        names = list(self.spec.space)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in
                       ["#", "trial", "status", self.spec.metric, "best", "steps", *names,
                        "why it stopped"])
        body = []
        for rank, row in enumerate(self.ranked(), 1):
            reason = row["error"] if row["status"] != "completed" and row["error"] else ""
            cells = [str(rank), html.escape(row["name"]), _static.badge(row["status"]),
                     _static.fmt(row["final"]) if row["final"] is not None else "",
                     _static.fmt(row["best"]) if row["best"] is not None else "",
                     str(row["steps"]),
                     *[_static.fmt(row["params"].get(n)) for n in names],
                     f"<span style='font-size:90%'>{html.escape(reason)}</span>"]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}"
                "</table>" if body else "<i>no trials yet</i>")

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as exc:  # shown in the view, never printed from this thread
                self.header_view.value = f"<pre>cannot read the sweep: {html.escape(str(exc))}</pre>"
            if self.finished:
                return

    def _open_trial(self, _button: Any) -> None:
        from ._run_widget import RunWidget

        if self.trial_picker.value:
            self.trial_output.clear_output()
            self.trial_output.append_display_data(
                RunWidget(self.backend, self.trial_picker.value))

    def stop(self) -> None:
        self._stop.set()

    def static_html(self) -> str:
        image = ""
        scored = [r for r in self.rows if r["final"] is not None and not math.isnan(r["final"])]
        if scored:
            from matplotlib.figure import Figure

            names = list(self.spec.space)[:4]
            fig = Figure(figsize=(3.6 * len(names), 2.8), dpi=80)
            for i, name in enumerate(names, 1):
                ax = fig.add_subplot(1, len(names), i)
                xs, labels = _numeric([r["params"].get(name) for r in scored])
                ax.scatter(xs, [r["final"] for r in scored], c=[r["final"] for r in scored],
                           cmap="viridis")
                if labels:
                    ax.set_xticks(range(len(labels)), labels, fontsize=7)
                ax.set_xlabel(name, fontsize=8)
                ax.set_ylabel(self.spec.metric, fontsize=8)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            image = (f"<img alt='params by metric' src='data:image/png;base64,"
                     f"{base64.b64encode(buffer.getvalue()).decode()}'/>")
        return f"<div class='mlops-sweep-static'>{self.header_view.value}" \
               f"{self.leaderboard_html()}{image}</div>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = self.summary_text()
        return bundle

    def summary_text(self) -> str:
        return "\n".join(summary_lines(self.info, self.rows, self.spec))
