"""How values, times, durations, sizes and statuses read, in every view (CLI, magics,
widgets, summaries): one module, so a run reads the same wherever it is shown."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from typing import Any

STATUS_COLOURS = {
    "completed": "#2e7d32", "failed": "#c62828", "lost": "#c62828",
    "canceled": "#6d4c41", "pruned": "#6d4c41",
    "ready": "#2e7d32", "stopped": "#6d4c41",  # endpoints
}
ACTIVE_COLOUR = "#1565c0"  # queued, starting, running


def fmt_value(value: Any) -> str:
    """A metric or parameter value: floats with 6 significant digits, NaN/inf as words."""
    if isinstance(value, float):
        return str(value) if math.isnan(value) or math.isinf(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def fmt_time(ts: float | None) -> str:
    """A timestamp in local time, or "" when there is none."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def fmt_latency(seconds: float | None) -> str:
    """A request latency: milliseconds below a second; a dash when none was measured."""
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_duration(row: dict[str, Any]) -> str:
    """How long a run (or sweep) row has run: to its end, or to now while it goes."""
    start = row.get("started_at")
    if not start:
        return ""
    return fmt_seconds((row.get("ended_at") or time.time()) - start)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def status_colour(status: str) -> str:
    return STATUS_COLOURS.get(status, ACTIVE_COLOUR)


def text_table(rows: list[list[str]], header: list[str]) -> str:
    """Columns padded to their widest cell, for terminals."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def jsonable(value: Any) -> Any:
    """``value`` with NaN and ±inf as the strings "nan", "inf", "-inf" (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(x) for x in value]
    return value


def dump_json(data: Any) -> str:
    return json.dumps(jsonable(data), indent=2, default=str)


def runs_frame(rows: list[dict[str, Any]]) -> Any:
    """Listed runs (``Backend.list_runs``) as a DataFrame: id, name, experiment, status,
    created, duration and ``param.*``, ``tag.*``, ``metric.*`` columns (latest values)."""
    import pandas as pd

    records = []
    for row in rows:
        record = {
            "id": row["id"], "name": row["name"], "experiment": row["experiment"],
            "status": row["status"], "created": pd.to_datetime(row["created_at"], unit="s"),
            "duration_s": (row["ended_at"] - row["started_at"])
            if row["ended_at"] and row["started_at"] else None,
        }
        record.update({f"param.{k}": v for k, v in row["params"].items()})
        record.update({f"tag.{k}": v for k, v in row["tags"].items()})
        record.update({f"metric.{k}": v for k, v in row["metrics"].items()})
        records.append(record)
    return pd.DataFrame.from_records(records)


def slots_text(slots: list[dict[str, Any]]) -> str:
    """Slots of the targets (``Workspace.targets()``) and the run holding each."""
    lines: list[str] = []
    for target in dict.fromkeys(s["target"] for s in slots):
        lines.append(f"target {target}:")
        for s in (s for s in slots if s["target"] == target):
            holder = (f"held by run {s['run_id']}" if s["run_id"]
                      else "held" if s["held"] else "free")
            if s.get("detail"):  # nodes, runs and agents describe themselves
                holder = s["detail"]
            lines.append(f"  {s['slot']:10s} {holder}")
    return "\n".join(lines)


def run_text(record: dict[str, Any], latest: dict[str, dict[str, Any]]) -> str:
    """Everything about a run for a terminal: fields, params, metrics (with their step),
    files, environment, error. ``record`` is ``Run.to_dict(environment=True)``."""
    row = record
    slots = (row["resources"] or {}).get("slots") if row["resources"] else None
    lines = [
        f"Run {row['name']}  ({row['id']})",
        f"  experiment  {row['experiment']}",
        f"  status      {row['status']}",
        f"  kind        {row['kind']}" + (f"  {row['source']}" if row["source"] else ""),
        f"  target      {row['target'] or ''}" + (f"  slots: {', '.join(slots)}" if slots else ""),
        f"  created     {fmt_time(row['created_at'])}",
        f"  started     {fmt_time(row['started_at'])}",
        f"  ended       {fmt_time(row['ended_at'])}",
        f"  duration    {fmt_duration(row)}",
        f"  host/pid    {row['host'] or ''} {row['pid'] or ''}".rstrip(),
    ]
    if row["progress"]:
        p = row["progress"]
        lines.append(f"  progress    cell {p['cell']} of {p['cells']}: {p['source']}")
    for title, data in (("params", row["params"]), ("tags", row["tags"])):
        if data:
            lines.append(f"\n{title}:")
            lines += [f"  {k} = {fmt_value(v)}" for k, v in data.items()]
    if latest:
        lines.append("\nmetrics (latest):")
        lines += [f"  {k} = {fmt_value(v['value'])}  (step {v['step']})" for k, v in latest.items()]
    if record.get("artifacts"):
        lines.append("\nartifacts:")
        lines += [f"  {a['path']}  {a['size']} bytes" for a in record["artifacts"]]
    env = row.get("environment") or {}
    if env:
        lines.append(f"\nenvironment: python {env.get('python')} on {env.get('platform')}, "
                     f"{len(env.get('packages', {}))} packages, GPUs: "
                     f"{', '.join(env.get('gpus') or []) or 'none'}")
    if row["error"]:
        lines.append("\nerror:")
        lines += ["  " + ln for ln in row["error"].rstrip().splitlines()]
    return "\n".join(lines)
