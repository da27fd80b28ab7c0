"""Static renderings of a run: what papermill, nbconvert, GitHub and terminals show.

A live widget is only a view for a frontend that has the widget manager; everywhere else the
notebook shows the text/html and text/plain of the same output, so those carry the result:
status, a metric table, params, a PNG of the charts and the tail of the log.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from .._format import fmt_value, status_colour


def fmt(value: Any) -> str:
    """A value for HTML: as ``_format.fmt_value`` writes it, escaped."""
    return html.escape(fmt_value(value))


def badge(status: str) -> str:
    colour = status_colour(status)
    return (f'<span class="mlops-badge" style="background:{colour};color:white;'
            f'padding:1px 7px;border-radius:3px;font-size:90%">{status}</span>')


def kv_table(title: str, rows: list[tuple[str, Any]], css: str = "") -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td style='text-align:left;padding:2px 8px'>{html.escape(str(k))}"
                   f"</td><td style='text-align:right;padding:2px 8px'>{fmt(v)}</td></tr>"
                   for k, v in rows)
    return (f"<table class='{css}' style='border-collapse:collapse;margin:4px 0'>"
            f"<tr><th style='text-align:left'>{title}</th><th></th></tr>{body}</table>")


def metrics_table(latest: dict[str, dict[str, Any]], counts: dict[str, int] | None = None) -> str:
    if not latest:
        return "<i>no metrics yet</i>"
    rows = "".join(
        f"<tr><td style='text-align:left;padding:2px 8px'>{html.escape(k)}</td>"
        f"<td style='text-align:right;padding:2px 8px'>{fmt(v['value'])}</td>"
        f"<td style='text-align:right;padding:2px 8px'>{v['step']}</td>"
        f"<td style='text-align:right;padding:2px 8px'>{(counts or {}).get(k, '')}</td></tr>"
        for k, v in sorted(latest.items())
    )
    return ("<table class='mlops-metric-table' style='border-collapse:collapse'>"
            "<tr><th style='text-align:left;padding:2px 8px'>metric</th>"
            "<th style='padding:2px 8px'>latest</th><th style='padding:2px 8px'>step</th>"
            f"<th style='padding:2px 8px'>points</th></tr>{rows}</table>")


def charts_png(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes | None:
    """One small line chart per repeated metric, as a PNG (None without matplotlib)."""
    repeated = {k: v for k, v in sorted(series.items()) if len(v[0]) > 1}
    if not repeated:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    cols = min(3, len(repeated))
    rows = -(-len(repeated) // cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows), dpi=80)
    for i, (key, (x, y)) in enumerate(repeated.items(), 1):
        ax = fig.add_subplot(rows, cols, i)
        ax.plot(x, y, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def run_html(row: dict[str, Any], latest: dict[str, dict[str, Any]], counts: dict[str, int],
             series: dict[str, tuple[np.ndarray, np.ndarray]], log_tail: str,
             artifacts: list[dict[str, Any]], elapsed: str) -> str:
    png = charts_png(series)
    image = (f"<img class='mlops-static-charts' alt='metric charts' src='data:image/png;"
             f"base64,{base64.b64encode(png).decode()}'/>" if png else "")
    files = "".join(f"<li><code>{html.escape(a['path'])}</code> {a['size']:,} bytes</li>"
                    for a in artifacts)
    error = ""
    if row["error"] and row["status"] != "completed":
        error = (f"<pre style='color:#c62828;max-height:12em;overflow:auto'>"
                 f"{html.escape(row['error'])}</pre>")
    return (
        f"<div class='mlops-run-static'>"
        f"<div><b>Run {html.escape(row['name'])}</b> <code>{row['id']}</code> "
        f"{badge(row['status'])}"
        f" on {html.escape(row['target'] or 'local')} · experiment "
        f"{html.escape(row['experiment'])} · {elapsed}</div>"
        f"{metrics_table(latest, counts)}{image}"
        f"{kv_table('params', list(row['params'].items()))}"
        f"{kv_table('tags', list(row['tags'].items()))}"
        + (f"<div><b>artifacts</b><ul>{files}</ul></div>" if files else "")
        + error
        + (f"<pre style='max-height:15em;overflow:auto'>{html.escape(log_tail)}</pre>"
           if log_tail else "")
        + "</div>"
    )


def run_text(row: dict[str, Any], latest: dict[str, dict[str, Any]], log_tail: str,
             elapsed: str) -> str:
    lines = [f"Run {row['name']} ({row['id']}) — {row['status']} on {row['target'] or 'local'}, "
             f"experiment {row['experiment']!r}, {elapsed}"]
    for key, point in sorted(latest.items()):
        lines.append(f"  {key} = {fmt(point['value'])}  (step {point['step']})")
    if row["error"] and row["status"] != "completed":
        lines.append("  error: " + row["error"].strip().splitlines()[-1])
    if log_tail:
        lines.append("  log (last lines):")
        lines += ["    " + ln for ln in log_tail.splitlines()[-10:]]
    return "\n".join(lines)
