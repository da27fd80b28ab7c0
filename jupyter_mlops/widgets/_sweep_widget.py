"""``SweepWidget``: a live view of a sweep — progress and why trials wait, every trial's metric
against step, the metric by each parameter, parallel coordinates, a sortable leaderboard with
the reason every stopped trial was stopped, Cancel, and any trial's run view on demand."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from typing import Any

import bqplot as bq
import ipywidgets as w
import numpy as np

from .._format import fmt_seconds, status_colour
from ..store import TERMINAL, Backend
from ..sweeps import (
    SweepSpec,
    best_trial,
    cancel_sweep,
    parse_space,
    progress,
    sweep_row,
    trial_rows,
)
from . import _static
from ._live import LiveView, error_html

MAX_OVERLAY_TRIALS = 100  # lines in the overlay chart (the newest trials beyond that are left out)
MARKERS = {"completed": "circle", "pruned": "cross", "failed": "square", "lost": "square",
           "canceled": "square"}  # anything else (queued, starting, running): triangle-up
LEGEND = ("completed", "running", "pruned", "failed")


def _marker(status: str) -> str:
    return MARKERS.get(status, "triangle-up")


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round values between ``low`` and ``high`` (as d3's ``ticks``)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Powers of ten within ``[low, high]`` (every k-th one if there are many), or the two
    ends when the range holds fewer than two."""
    first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
    powers = [10.0 ** e for e in range(first, last + 1)]
    if len(powers) < 2:
        return [low, high]
    stride = -(-len(powers) // most)
    return powers[::stride]


class _ParamAxis:
    """How one parameter is drawn: its scale (log for ``loguniform``), fixed domain from the
    search space so the axis does not move as trials arrive, and explicit ticks."""

    def __init__(self, name: str, expression: str):
        param = parse_space({name: expression})[name]
        self.name, self.kind, self.args = name, param.kind, param.args
        self.categories: list[str] | None = None
        if self.kind == "loguniform":
            low, high = float(self.args[0]), float(self.args[1])
            self.scale: Any = bq.LogScale(min=low, max=high)
            self.ticks, self.format = log_ticks(low, high), ".2~g"
        elif self.kind in ("uniform", "quniform", "randint"):
            low, high = float(self.args[0]), float(self.args[1])
            pad = (high - low) * 0.04
            self.scale = bq.LinearScale(min=low - pad, max=high + pad)
            self.ticks, self.format = nice_ticks(low, high), ".3~g"
        elif self.kind == "choice" and all(isinstance(v, (int, float))
                                           and not isinstance(v, bool) for v in self.args):
            values = sorted(float(v) for v in self.args)
            pad = (values[-1] - values[0]) * 0.06 or 1.0
            self.scale = bq.LinearScale(min=values[0] - pad, max=values[-1] + pad)
            self.ticks = values if len(values) <= 5 else nice_ticks(values[0], values[-1])
            self.format = ".3~g"
        elif self.kind == "choice":
            self.categories = [str(v) for v in self.args]
            self.scale = bq.OrdinalScale(domain=self.categories)
            self.ticks, self.format = [], ""
        else:  # normal: no bounds, the data decides
            self.scale = bq.LinearScale()
            self.ticks, self.format = [], ".3~g"

    def value(self, raw: Any) -> Any:
        if self.categories is not None:
            return str(raw)
        return float(raw)

    def unit(self, raw: Any) -> float:
        """Where ``raw`` sits along this axis, 0..1 (for parallel coordinates)."""
        if self.categories is not None:
            index = self.categories.index(str(raw)) if str(raw) in self.categories else 0
            return index / max(1, len(self.categories) - 1)
        value = float(raw)
        if self.kind == "loguniform":
            low, high = math.log10(self.args[0]), math.log10(self.args[1])
            return (math.log10(value) - low) / (high - low)
        if self.kind in ("uniform", "quniform", "randint"):
            low, high = float(self.args[0]), float(self.args[1])
            return (value - low) / ((high - low) or 1.0)
        if self.kind == "choice":
            values = sorted(float(v) for v in self.args)
            return (value - values[0]) / ((values[-1] - values[0]) or 1.0)
        return 0.5

    def axis(self) -> bq.Axis:
        axis = bq.Axis(scale=self.scale, label=self.name, tick_format=self.format or None,
                       label_offset="30px")
        if self.ticks:
            axis.tick_values = self.ticks
        return axis


class _ParamChart:
    """The metric against one parameter: a mark per status (shape and colour), a ring on
    the best trial, the trial's name in the tooltip."""

    def __init__(self, axis: _ParamAxis, metric: str):
        self.axis = axis
        self.y_scale = bq.LinearScale()
        scales = {"x": axis.scale, "y": self.y_scale}
        tooltip = bq.Tooltip(fields=["name", "x", "y"], labels=["trial", axis.name, metric],
                             formats=["", axis.format or "", ".4~g"])
        self.marks = {
            status: bq.Scatter(x=[], y=[], names=[], display_names=False, scales=scales,
                               marker=_marker(status), colors=[status_colour(status)],
                               default_size=40, stroke="white", tooltip=tooltip)
            for status in LEGEND}
        self.best = bq.Scatter(x=[], y=[], names=[], display_names=False, scales=scales,
                               marker="circle", default_size=260, fill=False,
                               colors=["#f9a825"], stroke_width=2.5, tooltip=tooltip)
        self.figure = bq.Figure(
            marks=[*self.marks.values(), self.best], title=f"{metric} by {axis.name}",
            axes=[axis.axis(), bq.Axis(scale=self.y_scale, side="left", tick_format=".3~g")],
            fig_margin={"top": 36, "bottom": 44, "left": 56, "right": 16},
            layout=w.Layout(width="320px", height="250px"),
            title_style={"font-size": "13px"})
        self.figure.add_class("mlops-sweep-chart")
        self.figure.add_class(f"mlops-sweep-chart-{axis.name}")

    def update(self, scored: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
        for status, mark in self.marks.items():
            group = [r for r in scored if _group(r["status"]) == status]
            xs = [self.axis.value(r["params"].get(self.axis.name)) for r in group]
            with mark.hold_sync():
                mark.x, mark.y = xs, [r["final"] for r in group]
                mark.names = [r["name"] for r in group]
        with self.best.hold_sync():
            if best is None:
                self.best.x, self.best.y, self.best.names = [], [], []
            else:
                self.best.x = [self.axis.value(best["params"].get(self.axis.name))]
                self.best.y, self.best.names = [best["final"]], [best["name"] + " (best)"]


def _group(status: str) -> str:
    if status in ("completed", "pruned"):
        return status
    if status in ("failed", "lost", "canceled"):
        return "failed"
    return "running"


class _Overlay:
    """Every trial's metric against step, one line per trial coloured by its status; a
    pruned trial's line ends where it stopped, with a cross."""

    def __init__(self, metric: str):
        self.x_scale, self.y_scale = bq.LinearScale(min=0), bq.LinearScale()
        self.lines: dict[str, bq.Lines] = {}
        self.ends = bq.Scatter(x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale},
                               marker="cross", colors=[status_colour("pruned")],
                               default_size=60)
        self.figure = bq.Figure(
            marks=[self.ends], title=f"{metric} by step, every trial",
            axes=[bq.Axis(scale=self.x_scale, label="step", tick_format="d", tick_values=[0]),
                  bq.Axis(scale=self.y_scale, side="left", tick_format=".3~g")],
            fig_margin={"top": 36, "bottom": 44, "left": 56, "right": 16},
            interaction=bq.interacts.PanZoom(scales={"x": [self.x_scale],
                                                     "y": [self.y_scale]}),
            layout=w.Layout(width="380px", height="250px"), title_style={"font-size": "13px"})
        self.figure.add_class("mlops-sweep-overlay")

    def update(self, rows: list[dict[str, Any]], series: dict[str, tuple[list, list]],
               changed: set[str], best_id: str | None) -> None:
        shown = [r for r in rows if r["id"] in series][:MAX_OVERLAY_TRIALS]
        added = False
        for row in shown:
            line = self.lines.get(row["id"])
            if line is None:
                line = self.lines[row["id"]] = bq.Lines(
                    x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale},
                    stroke_width=1.5, labels=[row["name"]],
                    tooltip=bq.Tooltip(fields=["name"], labels=["trial"]))
                added = True
                changed = changed | {row["id"]}
            colour = status_colour(row["status"])
            width = 3.0 if row["id"] == best_id else 1.5
            with line.hold_sync():
                if list(line.colors) != [colour]:
                    line.colors = [colour]
                if line.stroke_width != width:
                    line.stroke_width = width
                if row["id"] in changed:
                    xs, ys = series[row["id"]]
                    line.x, line.y = np.asarray(xs, float), np.asarray(ys, float)
        if added:
            self.figure.marks = [*self.lines.values(), self.ends]
        last = max((max(series[r["id"]][0], default=0) for r in shown), default=0)
        ticks = [int(t) for t in nice_ticks(0, max(1, last), 5) if float(t).is_integer()]
        if list(self.figure.axes[0].tick_values) != ticks:
            self.figure.axes[0].tick_values = ticks
        pruned = [r for r in shown if r["status"] == "pruned" and series[r["id"]][0]]
        with self.ends.hold_sync():
            self.ends.x = [series[r["id"]][0][-1] for r in pruned]
            self.ends.y = [series[r["id"]][1][-1] for r in pruned]


class _Parallel:
    """Parallel coordinates: one line per scored trial across every parameter's axis and the
    metric's, each axis scaled 0..1 over its range (log for ``loguniform``); the better the
    metric, the darker the line."""

    def __init__(self, axes: list[_ParamAxis], metric: str):
        self.axes, self.metric = axes, metric
        names = [a.name for a in axes] + [metric]
        self.x_scale, self.y_scale = bq.OrdinalScale(domain=names), bq.LinearScale(min=0, max=1)
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.lines = bq.Lines(x=names, y=[[0.0] * len(names)], scales=scales, colors=["#ccc"],
                              stroke_width=1.5, opacities=[0])
        self.figure = bq.Figure(
            marks=[self.lines], title="parameters → " + metric,
            axes=[bq.Axis(scale=self.x_scale, grid_lines="solid")],
            fig_margin={"top": 36, "bottom": 36, "left": 30, "right": 30},
            layout=w.Layout(width="380px", height="230px"), title_style={"font-size": "13px"})
        self.caption = w.HTML()
        self.view = w.VBox([self.figure, self.caption], layout=w.Layout(width="380px"))
        self.view.add_class("mlops-sweep-parallel")

    def update(self, scored: list[dict[str, Any]], maximize: bool) -> None:
        if not scored:
            return
        values = [r["final"] for r in scored]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        ys, colours = [], []
        for row in scored:
            quality = (row["final"] - low) / span
            ys.append([a.unit(row["params"].get(a.name)) for a in self.axes] + [quality])
            shade = quality if maximize else 1 - quality
            colours.append(_shade(shade))
        ranges = [f"{html.escape(a.name)} {_axis_end(a, 0)}&ndash;{_axis_end(a, 1)}"
                  + (" (log)" if a.kind == "loguniform" else "") for a in self.axes]
        ranges.append(f"{html.escape(self.metric)} {_static.fmt(low)}&ndash;{_static.fmt(high)}")
        caption = ("<div style='font-size:85%;color:#555;padding:0 30px'>bottom&ndash;top: "
                   + " · ".join(ranges) + "; darker is better</div>")
        with self.lines.hold_sync():
            self.lines.y, self.lines.colors, self.lines.opacities = ys, colours, [0.9] * len(ys)
        if self.caption.value != caption:
            self.caption.value = caption


def _axis_end(axis: _ParamAxis, end: int) -> str:
    if axis.categories is not None:
        return axis.categories[0 if end == 0 else -1]
    if axis.kind == "normal":
        return ""
    values = sorted(float(v) for v in axis.args[:2]) if axis.kind != "choice" else \
        sorted(float(v) for v in axis.args)
    return f"{values[0 if end == 0 else -1]:.3g}"


def _shade(t: float) -> str:
    """Light blue-grey (worst) to deep blue (best)."""
    t = min(1.0, max(0.0, t))
    start, stop = (0xb0, 0xbe, 0xc5), (0x0d, 0x47, 0xa1)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(start, stop, strict=False))


SORT_COLUMNS = ["rank", "trial", "status", "best", "last step", "duration"]


class SweepWidget(LiveView, w.VBox):
    """The live view of a sweep: ``SweepWidget(backend, sweep_id)`` or ``sweep.widget()``."""

    def __init__(self, backend: Backend, sweep_id: str, poll_interval: float = 1.0,
                 start: bool = True):
        self.backend, self.sweep_id = backend, sweep_id
        self.info = sweep_row(backend, sweep_id)
        self.status = self.info["status"]  # as last read
        self._drawn_status: str | None = None  # as last drawn: the poller ends on this
        self.spec: SweepSpec = SweepSpec(**self.info["spec"])
        self.rows: list[dict[str, Any]] = []
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self._last_metric_id = 0
        self._slots: tuple[float, int] | None = None  # (read at, slots the target has)

        self.header_view = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
        self.header_view.add_class("mlops-sweep-status")
        self.cancel_button = w.Button(description="Cancel sweep", icon="stop",
                                      button_style="warning",
                                      layout=w.Layout(width="auto", min_width="130px"))
        self.cancel_button.on_click(self._on_cancel)
        self.bar = w.IntProgress(min=0, max=self.spec.trials,
                                 layout=w.Layout(width="260px", min_width="260px"))
        self.bar.add_class("mlops-sweep-bar")
        self.wait_view = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
        self.wait_view.add_class("mlops-sweep-waiting")
        self.error_view = w.HTML()

        space = self.spec.space
        self.param_axes = [_ParamAxis(name, space[name]) for name in list(space)[:6]]
        self.overlay = _Overlay(self.spec.metric)
        self.charts = {a.name: _ParamChart(a, self.spec.metric) for a in self.param_axes}
        self.parallel = _Parallel(self.param_axes, self.spec.metric)
        self.legend_view = w.HTML(_legend_html())
        self.chart_box = w.Box([self.overlay.figure, *[c.figure for c in self.charts.values()],
                                self.parallel.view],
                               layout=w.Layout(flex_flow="row wrap"))

        columns = [*SORT_COLUMNS[:3], self.spec.metric, *SORT_COLUMNS[3:], *space]
        self.sort_by = w.Dropdown(description="sort by", options=columns, value="rank",
                                  layout=w.Layout(width="230px"))
        self.sort_order = w.ToggleButtons(options=[("↑ asc", "asc"), ("↓ desc", "desc")],
                                          value="asc", style={"button_width": "84px"})
        self.sort_by.add_class("mlops-sweep-sort")
        self.sort_order.add_class("mlops-sweep-order")
        self.sort_by.observe(self._on_sort, names=["value"])
        self.sort_order.observe(self._on_sort, names=["value"])
        self.board = w.HTML(layout=w.Layout(max_height="26em", overflow="auto"))
        self.board.add_class("mlops-sweep-leaderboard")

        self.trial_picker = w.Dropdown(description="trial", options=[],
                                       layout=w.Layout(width="320px"))
        self.open_button = w.Button(description="Open run", icon="external-link",
                                    disabled=True, layout=w.Layout(width="auto"))
        self.open_button.on_click(self._on_open)
        self.trial_output = w.Output()
        super().__init__([
            w.HBox([self.header_view, self.cancel_button], layout=w.Layout(align_items="center")),
            w.HBox([self.bar, self.wait_view], layout=w.Layout(align_items="center")),
            self.error_view, self.chart_box, self.legend_view,
            w.HBox([self.sort_by, self.sort_order], layout=w.Layout(align_items="center")),
            self.board,
            w.HBox([self.trial_picker, self.open_button], layout=w.Layout(align_items="center")),
            self.trial_output,
        ], layout=w.Layout(border="1px solid #ddd", padding="6px"))
        self.add_class("mlops-sweep-widget")
        self._init_live(poll_interval)
        self.refresh()
        if start and not self.finished:
            self.start()

    @property
    def finished(self) -> bool:
        """The sweep has ended *and* the view shows its final state (the poller sets every
        trait after reading the status, and ``finished`` is what readers wait on)."""
        return self._drawn_status in TERMINAL

    @property
    def _ended(self) -> bool:
        return self.status in TERMINAL

    # -- reading (the poller's) -----------------------------------------------------------

    def refresh(self) -> None:
        info = self.info = sweep_row(self.backend, self.sweep_id)
        self.status = info["status"]
        self.rows = trial_rows(self.backend, self.sweep_id, self.spec)
        changed = self._read_series()
        counts = progress(self.rows, self.spec.trials)
        best = best_trial(self.rows, self.spec)
        scored = [r for r in self.rows if r["final"] is not None and not math.isnan(r["final"])]
        with self.hold_sync():
            self.header_view.value = self.header_html(counts)
            self.bar.max = self.spec.trials
            self.bar.value = counts["done"] + counts["pruned"] + counts["failed"]
            self.bar.bar_style = _bar_style(self.status)
            self.wait_view.value = self.waiting_html(counts)
            self.cancel_button.disabled = self._ended
            self.cancel_button.layout.display = "none" if self._ended else ""
            self.error_view.value = (error_html(info["error"]) if info.get("error")
                                     and self.status != "completed" else "")
            self.board.value = self.leaderboard_html()
            for chart in self.charts.values():
                chart.update(scored, best)
            self.overlay.update(self.rows, self.series, changed,
                                best["id"] if best else None)
            self.parallel.update(scored, self.spec.goal == "maximize")
            options = [(f"#{r['trial_number']} {r['name']} ({r['status']})", r["id"])
                       for r in self.ranked()]
            if options != list(self.trial_picker.options):
                keep = self.trial_picker.value
                self.trial_picker.options = options
                ids = [v for _, v in options]
                self.trial_picker.value = (keep if keep in ids else
                                           best["id"] if best else ids[0] if ids else None)
            self.open_button.disabled = not options
        self._drawn_status = self.status

    def _read_series(self) -> set[str]:
        ids = [r["id"] for r in self.rows]
        found = self.backend.store.metric_rows_many(ids, self.spec.metric, self._last_metric_id)
        changed = set()
        for metric_id, run_id, step, value in found:
            xs, ys = self.series.setdefault(run_id, ([], []))
            xs.append(step)
            ys.append(value)
            changed.add(run_id)
            self._last_metric_id = metric_id
        return changed

    def show_error(self, text: str) -> None:
        self.error_view.value = error_html(text)

    # -- what it shows --------------------------------------------------------------------

    def header_html(self, counts: dict[str, int]) -> str:
        info = self.info
        parts = [f"{counts['done']} done", f"{counts['running']} running",
                 f"{counts['queued']} queued", f"{counts['pruned']} pruned",
                 f"{counts['failed']} failed"]
        waiting = self.spec.trials - len(self.rows)
        if waiting > 0 and not self._ended:
            parts.append(f"{waiting} to sample")
        return (f"<div style='white-space:nowrap;overflow:hidden;text-overflow:ellipsis'>"
                f"<b>{html.escape(info['name'])}</b> <code>{info['id']}</code> "
                f"{_static.badge(info['status'])} {self.spec.goal} "
                f"<b>{html.escape(self.spec.metric)}</b> · {' · '.join(parts)} "
                f"of {self.spec.trials} · {fmt_seconds(_elapsed(info))}</div>")

    def target_slots(self) -> int | None:
        """Slots of the sweep's target that fit one trial (read every 10 s at most)."""
        now = time.monotonic()
        if self._slots is None or now - self._slots[0] > 10:
            try:
                from ..compute import get_target

                slots = get_target(self.spec.target).slots(self.backend)
                kind = "gpu" if self.spec.gpus else "cpu"
                fitting = sum(1 for s in slots if s.slot.kind == kind)
                per_trial = max(1, self.spec.gpus)
                self._slots = (now, fitting // per_trial)
            except Exception:  # a plugin target that cannot say: no explanation line
                self._slots = (now, -1)
        return None if self._slots[1] < 0 else self._slots[1]

    def waiting_html(self, counts: dict[str, int]) -> str:
        """One line on what limits how many trials run at once."""
        if self._ended:
            return ""
        slots = self.target_slots()
        concurrency = self.spec.concurrency
        kind = "GPU" if self.spec.gpus else "CPU"
        if slots is not None and slots < concurrency:
            at_once = "one trial" if slots == 1 else f"{slots} trials"
            text = (f"Trials wait: --concurrency {concurrency}, but target "
                    f"{html.escape(self.spec.target)} has {slots} {kind} slot"
                    f"{'s' if slots != 1 else ''}, so {at_once} at a time"
                    + (" (JUPYTER_MLOPS_CPU_SLOTS adds CPU slots)" if kind == "CPU" else ""))
        elif counts["queued"]:
            text = (f"{counts['queued']} queued: trials wait for a free slot "
                    "(other runs may hold some: %mlops targets)")
        else:
            text = f"up to {concurrency} trials at once"
        return f"<div style='padding-left:10px;color:#555;line-height:1.3'>{text}</div>"

    def ranked(self) -> list[dict[str, Any]]:
        maximize = self.spec.goal == "maximize"

        def key(row: dict[str, Any]) -> tuple[int, float]:
            value = row["final"]
            if value is None or math.isnan(value):
                return (1, 0.0)
            return (0, -value if maximize else value)

        return sorted(self.rows, key=key)

    def sorted_rows(self) -> list[tuple[int, dict[str, Any]]]:
        """(rank, row) in the order the leaderboard shows, as chosen by ``sort_by``."""
        ranked = list(enumerate(self.ranked(), 1))
        column, descending = self.sort_by.value, self.sort_order.value == "desc"
        if column == "rank":
            return ranked[::-1] if descending else ranked

        def value(item: tuple[int, dict[str, Any]]) -> Any:
            row = item[1]
            if column == "trial":
                return row["trial_number"]
            if column == "status":
                return row["status"]
            if column == self.spec.metric:
                return row["final"]
            if column == "best":
                return row["best"]
            if column == "last step":
                return row["steps"] - 1 if row["steps"] else None
            if column == "duration":
                return _duration(row)
            return row["params"].get(column)

        present = [i for i in ranked if _sortable(value(i))]
        missing = [i for i in ranked if not _sortable(value(i))]
        try:
            present.sort(key=value, reverse=descending)
        except TypeError:  # mixed types in one parameter: compare as text
            present.sort(key=lambda i: str(value(i)), reverse=descending)
        return present + missing  # no value: last either way

    def leaderboard_html(self) -> str:
        names = list(self.spec.space)
        sort = self.sort_by.value
        arrow = " ↓" if self.sort_order.value == "desc" else " ↑"
        heads = ["#", "trial", "status", self.spec.metric, "best", "last step", "duration",
                 *names, "why it stopped"]
        keys = ["rank", "trial", "status", self.spec.metric, "best", "last step", "duration",
                *names, ""]
        th = "padding:3px 8px;text-align:left;white-space:nowrap;border-bottom:1px solid #bbb"
        head = "".join(f"<th style='{th}'>{html.escape(h)}{arrow if k == sort else ''}</th>"
                       for h, k in zip(heads, keys, strict=False))
        best = best_trial(self.rows, self.spec)
        body = []
        td = "padding:2px 8px;white-space:nowrap;text-align:left"
        for rank, row in self.sorted_rows():
            last_step = row["steps"] - 1 if row["steps"] else None
            reason = row["error"] if row["status"] != "completed" and row["error"] else ""
            reason = reason.removeprefix("pruned: ")  # the status column says so already
            if reason and row["status"] == "pruned" and last_step is not None:
                reason = f"it stopped after step {last_step}: {reason}"
            star = " ★" if best is not None and row["id"] == best["id"] else ""
            cells = [str(rank), f"{html.escape(row['name'])}{star}",
                     _static.badge(row["status"]),
                     _static.fmt(row["final"]) if row["final"] is not None else "",
                     _static.fmt(row["best"]) if row["best"] is not None else "",
                     "" if last_step is None else str(last_step),
                     fmt_seconds(_duration(row)) if _duration(row) is not None else "",
                     *[_static.fmt(row["params"].get(n)) for n in names]]
            style = " style='background:#fff8e1'" if star else ""
            body.append(f"<tr{style}>" + "".join(f"<td style='{td}'>{c}</td>" for c in cells)
                        + f"<td style='padding:2px 8px;text-align:left;font-size:90%;"
                          f"white-space:normal;line-height:1.3;min-width:12em;max-width:26em' "
                          f"title='{html.escape(reason)}'>"
                          f"{html.escape(_shortened(reason, REASON_CHARS))}</td></tr>")
        return (f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>" if body else "<i>no trials yet</i>")

    # -- callbacks (only requests) --------------------------------------------------------

    def _on_cancel(self, _button: Any) -> None:
        def cancel() -> None:
            self.cancel_button.description = "Canceling"
            self.cancel_button.disabled = True
            cancel_sweep(self.backend, self.sweep_id)

        self.request(cancel)

    def _on_sort(self, _change: dict[str, Any]) -> None:
        self.request(lambda: None)  # the next refresh draws the table in the new order

    def _on_open(self, _button: Any) -> None:
        run_id = self.trial_picker.value

        def open_trial() -> None:
            from ._run_widget import RunWidget

            if not run_id:
                return
            view = RunWidget(self.backend, run_id)
            self.trial_output.outputs = ()
            self.trial_output.append_display_data(view)

        self.request(open_trial)

    # -- static form ----------------------------------------------------------------------

    def static_html(self) -> str:
        counts = progress(self.rows, self.spec.trials)
        image = self.charts_png()
        img = (f"<img class='mlops-sweep-static-charts' alt='{self.spec.metric} by step and "
               f"by parameter' src='data:image/png;base64,{base64.b64encode(image).decode()}'/>"
               if image else "")
        return (f"<div class='mlops-sweep-static'>{self.header_html(counts)}"
                f"<div style='overflow-x:auto'>{self.leaderboard_html()}</div>{img}</div>")

    def static_text(self) -> str:
        from ..sweeps import summary_lines

        return "\n".join(summary_lines(self.info, self.rows, self.spec))

    summary_text = static_text

    def charts_png(self) -> bytes | None:
        scored = [r for r in self.rows if r["final"] is not None and not math.isnan(r["final"])]
        if not scored and not self.series:
            return None
        from matplotlib.figure import Figure

        axes = self.param_axes[:3]
        fig = Figure(figsize=(3.6 * (1 + len(axes)), 2.8), dpi=80)
        ax = fig.add_subplot(1, 1 + len(axes), 1)
        for row in self.rows:
            if row["id"] in self.series:
                xs, ys = self.series[row["id"]]
                ax.plot(xs, ys, color=status_colour(row["status"]), linewidth=1)
        ax.set_title(f"{self.spec.metric} by step", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        for i, axis in enumerate(axes, 2):
            ax = fig.add_subplot(1, 1 + len(axes), i)
            for status in LEGEND:
                group = [r for r in scored if _group(r["status"]) == status]
                xs = [axis.value(r["params"].get(axis.name)) for r in group]
                ax.scatter(xs, [r["final"] for r in group], color=status_colour(status),
                           marker={"circle": "o", "cross": "x", "square": "s"}.get(
                               _marker(status), "^"), label=status)
            if axis.kind == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(axis.name, fontsize=8)
            ax.set_ylabel(self.spec.metric, fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()


def _bar_style(status: str) -> str:
    return {"completed": "success", "failed": "danger", "lost": "danger",
            "canceled": "warning"}.get(status, "")


def _elapsed(row: dict[str, Any]) -> float:
    start = row.get("started_at") or row.get("created_at") or time.time()
    return (row.get("ended_at") or time.time()) - start


REASON_CHARS = 110  # a longer "why it stopped" ends in an ellipsis; the tooltip has it all


def _shortened(text: str, limit: int) -> str:
    """``text`` cut at a word before ``limit`` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;(") + " …"


def _duration(row: dict[str, Any]) -> float | None:
    if not row.get("started_at"):
        return None
    return (row.get("ended_at") or time.time()) - row["started_at"]


def _sortable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _legend_html() -> str:
    shapes = {"completed": "●", "running": "▲", "pruned": "✕", "failed": "■"}
    items = "".join(
        f"<span style='margin-right:14px;white-space:nowrap'>"
        f"<span style='color:{status_colour(s)}'>{shapes[s]}</span> {s}</span>"
        for s in LEGEND)
    return (f"<div class='mlops-sweep-legend' style='font-size:90%;color:#444'>{items}"
            f"<span style='white-space:nowrap'><span style='color:#f9a825'>◯</span> best"
            f"</span></div>")
