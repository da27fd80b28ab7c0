"""``RunsTable``: the runs of a workspace as a sortable table that stays live while shown."""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w
import pandas as pd

from .._format import fmt_seconds, runs_frame
from ..store import Backend
from . import _static
from ._live import LiveView, error_html

FIRST_COLUMNS = ["name", "experiment", "status", "created", "duration_s"]
TH = ("padding:4px 12px 4px 0;text-align:left;white-space:nowrap;"
      "border-bottom:1px solid #bbb;position:sticky;top:0;background:var(--jp-layout-color0,#fff)")
TD = "padding:2px 12px 2px 0;white-space:nowrap;text-align:left"
NAME_WIDTH = "22em"  # longer names are cut with an ellipsis (the whole name on hover)


class RunsTable(LiveView, w.VBox):
    """Runs newest first; pick any column to sort by. It reads the store every
    ``poll_interval`` seconds for as long as it is shown (``stop()`` ends that), so runs
    started later appear without Refresh."""

    def __init__(self, backend: Backend, experiment: str | None = None, limit: int = 200,
                 poll_interval: float = 2.0, start: bool = True):
        self.backend, self.experiment, self.limit = backend, experiment, limit
        self.frame = pd.DataFrame()
        self._rows: list[dict[str, Any]] = []
        self._static_stale, self._static_sent_at = False, time.monotonic()
        self.sort_by = w.Dropdown(description="sort by", options=["created"], value="created",
                                  layout=w.Layout(width="260px"))
        # The label is the order itself, so it can never read "descending" while ascending.
        self.order = w.ToggleButtons(options=[("↓ newest / largest first", "desc"),
                                              ("↑ oldest / smallest first", "asc")],
                                     value="desc", style={"button_width": "190px"})
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       layout=w.Layout(width="auto"))
        self.count_view = w.HTML()
        self.table_view = w.HTML(layout=w.Layout(max_height="32em", overflow="auto"))
        self.table_view.add_class("mlops-runs-table")
        self.sort_by.observe(self._on_sort, names=["value"])
        self.order.observe(self._on_sort, names=["value"])
        self.refresh_button.on_click(lambda _b: self.request(lambda: None))
        super().__init__([w.HBox([self.sort_by, self.order, self.refresh_button,
                                  self.count_view], layout=w.Layout(align_items="center")),
                          self.table_view])
        self.add_class("mlops-runs-widget")
        self._init_live(poll_interval)
        self.refresh()
        if start:
            self.start()

    @property
    def finished(self) -> bool:
        return self._stop.is_set()  # a table of runs is never done: new runs may come

    @property
    def descending(self) -> bool:
        return self.order.value == "desc"

    def refresh(self) -> None:
        rows = self.backend.list_runs(experiment=self.experiment, limit=self.limit)
        if rows != self._rows or self.table_view.value == "":
            self._rows = rows
            self.frame = runs_frame(rows)
        frame = self.frame
        columns = list(frame.columns) if len(frame) else ["created"]
        page = self.table_html()
        with self.hold_sync():
            if list(self.sort_by.options) != columns:
                keep = self.sort_by.value if self.sort_by.value in columns else "created"
                self.sort_by.options = columns
                self.sort_by.value = keep
            if self.table_view.value != page:
                self.table_view.value = page
                self._static_stale = True
            count = f"<span style='color:#555;padding-left:8px'>{len(frame)} runs</span>"
            if self.count_view.value != count:
                self.count_view.value = count

        # The saved notebook keeps the static form: follow the table, at most every 5 s.
        if self._static_stale and self._static_handle is not None:
            self._static_stale, self._static_sent_at = False, time.monotonic()
            self._static_handle.update(self.static_bundle(), raw=True)

    def show_error(self, text: str) -> None:
        self.table_view.value = error_html(text)

    def sorted_frame(self) -> pd.DataFrame:
        frame = self.frame
        if not len(frame) or self.sort_by.value not in frame.columns:
            return frame
        column = frame[self.sort_by.value]
        key = None if pd.api.types.is_numeric_dtype(column) or \
            pd.api.types.is_datetime64_any_dtype(column) else (lambda s: s.astype(str))
        return frame.sort_values(self.sort_by.value, ascending=not self.descending,
                                 na_position="last", key=key, kind="stable")

    def columns(self, frame: pd.DataFrame) -> list[str]:
        return [*[c for c in FIRST_COLUMNS if c in frame.columns], "id",
                *[c for c in frame.columns if c not in FIRST_COLUMNS and c != "id"]]

    def table_html(self) -> str:
        frame = self.sorted_frame()
        if not len(frame):
            return "<i>no runs yet</i>"
        columns = self.columns(frame)
        labels = {"duration_s": "duration", "created": "created"}
        sort = self.sort_by.value
        arrow = " ↓" if self.descending else " ↑"
        head = "".join(f"<th style='{TH}'>{html.escape(labels.get(c, c))}"
                       f"{arrow if c == sort else ''}</th>" for c in columns)
        body = []
        for _, row in frame.iterrows():
            cells = []
            for c in columns:
                value = row[c]
                if c == "status":
                    cells.append(f"<td style='{TD}'>{_static.badge(value)}</td>")
                elif c == "created":
                    cells.append(f"<td style='{TD}' title='{value:%Y-%m-%d %H:%M:%S}'>"
                                 f"{value:%m-%d %H:%M:%S}</td>")
                elif value is None or (isinstance(value, float) and pd.isna(value)):
                    cells.append(f"<td style='{TD}'></td>")
                elif c == "duration_s":
                    cells.append(f"<td style='{TD};text-align:right'>"
                                 f"{fmt_seconds(value)}</td>")
                elif c == "name":
                    name = html.escape(str(value))
                    cells.append(f"<td style='{TD};max-width:{NAME_WIDTH};overflow:hidden;"
                                 f"text-overflow:ellipsis' title='{name}'>{name}</td>")
                elif c == "id":
                    cells.append(f"<td style='{TD}'><code>{html.escape(value)}</code></td>")
                else:
                    cells.append(f"<td style='{TD}'>{_static.fmt(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f"<table class='mlops-runs' style='border-collapse:collapse'>"
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def _on_sort(self, _change: dict[str, Any]) -> None:
        self.request(lambda: None)  # the poller redraws in the new order

    def static_html(self) -> str:
        return self.table_html()

    def static_text(self) -> str:
        frame = self.sorted_frame()
        if not len(frame):
            return "no runs yet"
        shown = frame[[c for c in self.columns(frame) if c in frame.columns]].copy()
        shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M:%S")
        return shown.to_string(index=False)
