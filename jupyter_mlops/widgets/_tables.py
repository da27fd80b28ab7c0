"""Small table views: ``%mlops models``, ``%mlops datasets`` and ``%mlops targets``.

Each is a compact HTML table (no index column, timestamps to the second, nothing wrapping)
with a Refresh button, shown like every view: the widget plus its static form.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ipywidgets as w
import pandas as pd

from .._format import fmt_value
from ..store import Backend
from . import _static
from ._live import LiveView, error_html

TH = ("padding:4px 14px 4px 0;text-align:left;white-space:nowrap;"
      "border-bottom:1px solid #bbb")
TD = "padding:2px 14px 2px 0;white-space:nowrap;text-align:left"


def frame_html(frame: pd.DataFrame, empty: str, css: str = "") -> str:
    """A DataFrame as a compact table: no index, local timestamps to the second."""
    if not len(frame):
        return f"<i>{html.escape(empty)}</i>"
    head = "".join(f"<th style='{TH}'>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            if isinstance(value, pd.Timestamp):
                text = _local(value)
            elif column == "status" or column == "state":
                cells.append(f"<td style='{TD}'>{_static.badge(str(value))}</td>")
                continue
            elif value is None or (isinstance(value, float) and pd.isna(value)):
                text = ""
            else:
                text = fmt_value(value)
            cells.append(f"<td style='{TD}'>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='{css}' style='border-collapse:collapse'><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def frame_text(frame: pd.DataFrame, empty: str) -> str:
    if not len(frame):
        return empty
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_datetime64_any_dtype(shown[column]):
            shown[column] = shown[column].map(_local)
    return shown.to_string(index=False)


def _local(stamp: pd.Timestamp) -> str:
    # The registries store UTC epoch seconds (pd.to_datetime(unit="s")): show local time.
    seconds = stamp.tz_localize("UTC").timestamp() if stamp.tzinfo is None else stamp.timestamp()
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


class FrameTable(LiveView, w.VBox):
    """A titled table read by ``load()``; Refresh asks the poller to read it again."""

    def __init__(self, title: str, load: Callable[[], pd.DataFrame], empty: str,
                 css: str):
        self.title, self.load, self.empty, self.css = title, load, empty, css
        self.frame = pd.DataFrame()
        self.title_view = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       layout=w.Layout(width="auto"))
        self.refresh_button.on_click(lambda _b: self.request(lambda: None))
        self.table_view = w.HTML(layout=w.Layout(max_height="24em", overflow="auto"))
        self.table_view.add_class(css)
        super().__init__([w.HBox([self.title_view, self.refresh_button],
                                 layout=w.Layout(align_items="center")), self.table_view],
                         layout=w.Layout(border="1px solid #ddd", padding="6px"))
        self.add_class("mlops-table-widget")
        self._init_live(1.0)
        self.refresh()

    @property
    def finished(self) -> bool:
        return True  # read once, and again on Refresh

    def refresh(self) -> None:
        self.frame = self.load()
        with self.hold_sync():
            self.title_view.value = (f"<b>{html.escape(self.title)}</b> "
                                     f"<span style='color:#555'>· {len(self.frame)}</span>")
            self.table_view.value = frame_html(self.frame, self.empty, self.css)

    def show_error(self, text: str) -> None:
        self.table_view.value = error_html(text)

    def static_html(self) -> str:
        return (f"<div><b>{html.escape(self.title)}</b></div>"
                + frame_html(self.frame, self.empty, self.css))

    def static_text(self) -> str:
        return f"{self.title}\n{frame_text(self.frame, self.empty)}"


def RegistryTable(backend: Backend, what: str, name: str | None = None) -> FrameTable:
    """``%mlops models|datasets [NAME]``: every version (of NAME), newest registry rows."""
    from ..registry import DatasetRegistry, ModelRegistry

    registry = ModelRegistry(backend) if what == "models" else DatasetRegistry(backend)
    title = what if name is None else f"{what}: {name}"
    return FrameTable(title, lambda: registry.dataframe(name),
                      f"no {what} registered yet in {backend.location.directory}",
                      f"mlops-{what}-table")


def TargetsTable(backend: Backend) -> FrameTable:
    """``%mlops targets``: every slot of the compute targets and the run holding it; Ray
    nodes and runs, and the local agent's idle state, as ``describe_targets`` gives them."""
    from ..compute import describe_targets

    def load() -> pd.DataFrame:
        records: list[dict[str, Any]] = [
            {"target": s["target"], "slot": s["slot"],
             "state": s.get("detail") or ("held" if s["held"] else "free"),
             "run": s["run_id"] or ""}
            for s in describe_targets(backend)]
        return pd.DataFrame.from_records(records, columns=["target", "slot", "state", "run"])

    return FrameTable("targets", load, "no targets", "mlops-targets-table")
