"""``RunsTable``: the runs of a workspace as a sortable table whose statuses stay live."""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as w
import pandas as pd

from .._format import runs_frame
from ..store import ACTIVE, Backend
from . import _static

FIRST_COLUMNS = ["name", "experiment", "status", "created", "duration_s"]


class RunsTable(w.VBox):
    """Runs newest first; pick any column to sort by. Polls while some run is active."""

    def __init__(self, backend: Backend, experiment: str | None = None, limit: int = 200,
                 poll_interval: float = 1.0, start: bool = True):
        self.backend, self.experiment, self.limit = backend, experiment, limit
        self.poll_interval = poll_interval
        self.frame = pd.DataFrame()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sort_by = w.Dropdown(description="sort by", options=["created"], value="created",
                                  layout=w.Layout(width="260px"))
        self.descending = w.ToggleButton(value=True, description="descending",
                                         icon="sort-amount-desc", layout=w.Layout(width="130px"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       layout=w.Layout(width="100px"))
        self.table_view = w.HTML(layout=w.Layout(max_height="30em", overflow="auto"))
        self.table_view.add_class("mlops-runs-table")
        self.sort_by.observe(self._on_sort, names=["value"])
        self.descending.observe(self._on_sort, names=["value"])
        self.refresh_button.on_click(lambda _b: self.refresh())
        super().__init__([w.HBox([self.sort_by, self.descending, self.refresh_button]),
                          self.table_view])
        self.add_class("mlops-runs-widget")
        self.refresh()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._follow, daemon=True,
                                            name="mlops-runs-table")
            self._thread.start()

    def refresh(self) -> None:
        with self._lock:
            frame = runs_frame(self.backend.list_runs(experiment=self.experiment,
                                                      limit=self.limit))
            self.frame = frame
            columns = list(frame.columns) if len(frame) else ["created"]
            with self.hold_sync():
                if list(self.sort_by.options) != columns:
                    keep = self.sort_by.value if self.sort_by.value in columns else "created"
                    self.sort_by.options = columns
                    self.sort_by.value = keep
                self.table_view.value = self.table_html()

    def sorted_frame(self) -> pd.DataFrame:
        frame = self.frame
        if not len(frame) or self.sort_by.value not in frame.columns:
            return frame
        column = frame[self.sort_by.value]
        key = None if pd.api.types.is_numeric_dtype(column) else (lambda s: s.astype(str))
        return frame.sort_values(self.sort_by.value, ascending=not self.descending.value,
                                 na_position="last", key=key, kind="stable")

    def table_html(self) -> str:
        frame = self.sorted_frame()
        if not len(frame):
            return "<i>no runs yet</i>"
        columns = ["id", *[c for c in FIRST_COLUMNS if c in frame.columns],
                   *[c for c in frame.columns if c not in FIRST_COLUMNS and c != "id"]]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for _, row in frame.iterrows():
            cells = []
            for c in columns:
                value = row[c]
                if c == "status":
                    cells.append(f"<td>{_static.badge(value)}</td>")
                elif c == "created":
                    cells.append(f"<td>{value:%Y-%m-%d %H:%M:%S}</td>")
                elif value is None or (isinstance(value, float) and pd.isna(value)):
                    cells.append("<td></td>")
                else:
                    cells.append(f"<td>{_static.fmt(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}</table>")

    def _on_sort(self, _change: dict[str, Any]) -> None:
        self.table_view.value = self.table_html()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as exc:  # shown in the view, never printed from this thread
                self.table_view.value = f"<pre>cannot read runs: {html.escape(str(exc))}</pre>"
            if len(self.frame) and not self.frame["status"].isin(ACTIVE).any():
                return

    def stop(self) -> None:
        self._stop.set()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.table_html()
        frame = self.sorted_frame()
        bundle["text/plain"] = frame.to_string() if len(frame) else "no runs yet"
        return bundle
