"""``Run``: a handle on one run that reads its state from the store on every access.

A Run never caches status or metrics: the job writes them from another process, so the only
truthful answer is the store's current one. Reading is also where a dead job is noticed:
a run whose heartbeat went stale (or whose process on this host is gone) is marked ``lost``.
"""

from __future__ import annotations

import html
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._processes import kill_tree, process_gone
from ..errors import NotFound, RunFailed
from ._store import ACTIVE, TERMINAL

if TYPE_CHECKING:
    import pandas as pd

    from ..registry import Dataset, Model
    from ._workspace import Workspace

HOSTNAME = socket.gethostname()


class Run:
    """A tracked run. Attributes are read from the workspace store each time."""

    def __init__(self, workspace: Workspace, run_id: str):
        self.workspace = workspace
        self.id = run_id

    # -- state ----------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        row = self.workspace.store.get_run_row(self.id)
        if row is None:
            raise NotFound(f"no run with id {self.id!r} in {self.workspace.location.directory}")
        if row["status"] in ("starting", "running") and self._check_lost(row):
            row = self.workspace.store.get_run_row(self.id) or row
        return row

    def _check_lost(self, row: dict[str, Any]) -> bool:
        """Mark the run lost if its job stopped answering; True if it was marked."""
        now = time.time()
        reason = None
        beat = row["heartbeat_at"] or row["started_at"] or row["created_at"]
        if now - beat > self.workspace.config.lost_after:
            reason = f"no heartbeat for {now - beat:.0f} s: the job process vanished"
        elif row["host"] == HOSTNAME and row["pid"] and process_gone(row["pid"]):
            # Re-check after a moment: the job may be writing its ending right now.
            time.sleep(0.2)
            fresh = self.workspace.store.get_run_row(self.id)
            if fresh and fresh["status"] in ("starting", "running"):
                reason = f"the job process (pid {row['pid']}) died without reporting an end"
        if reason is None:
            return False
        marked = self.workspace.store.set_status(
            self.id, "lost", only_from=("starting", "running"), error=reason
        )
        kernel = (row["resources"] or {}).get("kernel_pid")
        if marked and kernel and row["host"] == HOSTNAME:
            kill_tree(kernel)  # an orphaned kernel would keep its GPU memory
        return marked

    @property
    def name(self) -> str:
        return self._row()["name"]

    @property
    def status(self) -> str:
        return self._row()["status"]

    @property
    def experiment(self) -> str:
        return self._row()["experiment"]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._row()["params"])

    @property
    def tags(self) -> dict[str, Any]:
        return dict(self._row()["tags"])

    @property
    def error(self) -> str | None:
        return self._row()["error"]

    @property
    def progress(self) -> dict[str, Any] | None:
        return self._row()["progress"]

    @property
    def environment(self) -> dict[str, Any] | None:
        return self._row()["environment"]

    def info(self) -> dict[str, Any]:
        """Every stored field of the run, as one dict."""
        return self._row()

    # -- metrics and logs -----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The latest value of every metric key."""
        return {k: v["value"] for k, v in self.workspace.store.latest_metrics(self.id).items()}

    def metric_history(self, key: str) -> pd.DataFrame:
        """Every point of one metric: columns ``step``, ``value``, ``wall_time``."""
        import pandas as pd

        rows = self.workspace.store.metric_rows(self.id, key=key)
        frame = pd.DataFrame(
            [(s, v, w) for _, _, s, v, w in rows], columns=["step", "value", "wall_time"]
        )
        return frame.astype({"step": "int64", "value": "float64", "wall_time": "float64"})

    def logs(self) -> str:
        """The run's whole output so far (stdout and stderr interleaved as they came)."""
        return "".join(text for _, _, text in self.workspace.store.log_chunks(self.id))

    # -- artifacts ------------------------------------------------------------------------

    def artifacts(self) -> list[dict[str, Any]]:
        """Stored files: ``path``, ``size``, ``sha256``, ``created_at``."""
        return self.workspace.store.artifacts(self.id)

    def download(self, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Copy an artifact (or every artifact under a folder ``path``) to ``dest``."""
        stored = {a["path"] for a in self.artifacts()}
        prefix = path.rstrip("/") + "/"
        if path in stored:
            return self.workspace.artifacts.download(self.id, path, dest)
        inside = sorted(p for p in stored if p.startswith(prefix))
        if not inside:
            names = ", ".join(sorted(stored)) or "none"
            raise NotFound(f"run {self.id} has no artifact {path!r} (it has: {names})")
        dest = Path(dest)
        for p in inside:
            self.workspace.artifacts.download(self.id, p, dest / p[len(prefix):])
        return dest

    def outputs(self) -> dict[str, Any]:
        """The values a ``%%train --outputs a,b`` cell sent back, by name."""
        import cloudpickle

        found = {}
        for item in self.artifacts():
            path = item["path"]
            if path.startswith("returned/") and path.endswith(".pkl"):
                with self.workspace.artifacts.open(self.id, path) as handle:
                    found[path[len("returned/"):-len(".pkl")]] = cloudpickle.load(handle)
        return found

    # -- registry -------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: str,
        tags: dict[str, Any] | None = None,
        description: str | None = None,
        reuse: bool = False,
    ) -> Model:
        """Register this run's artifact ``path`` (a file or folder, e.g. ``"model.pkl"`` for
        ``outputs/model.pkl``) as the next version of model ``name``; see
        ``ws.models.register``. Works while the run is still going, too."""
        return self.workspace.models.register(
            name, path, run=self, tags=tags, description=description, reuse=reuse)

    def inputs(self) -> list[Dataset]:
        """The dataset versions this run read (``--dataset``, ``mlops.dataset()``)."""
        return self.workspace.datasets.inputs_of(self)

    # -- control --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.2, raise_on_failure: bool = True
             ) -> Run:
        """Block until the run ends; raise ``RunFailed`` unless it ``completed``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still {status} after {timeout} s")
            time.sleep(poll)
        if raise_on_failure and status != "completed":
            detail = (self.error or "").strip().splitlines()
            raise RunFailed(f"run {self.id} ended {status}: {detail[-1] if detail else ''}")
        return self

    def cancel(self) -> None:
        """Ask the run to stop; a queued run is canceled at once, a running one by its job."""
        store = self.workspace.store
        if store.set_status(self.id, "canceled", only_from=("queued",), error="canceled"):
            return
        if self.status in ACTIVE:
            store.request_stop(self.id, "canceled by request")

    # -- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        row = self.workspace.store.get_run_row(self.id)
        status = row["status"] if row else "missing"
        name = row["name"] if row else "?"
        return f"<Run {self.id} {name!r} {status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def summary_lines(self) -> list[str]:
        """Where the run went and how to follow it: the text form of the status display."""
        row = self._row()
        slots = ", ".join((row["resources"] or {}).get("slots", []))
        where = f"{row['target'] or 'local'}" + (f" [{slots}]" if slots else "")
        lines = [
            f"Run {row['name']} ({row['id']}) — {row['status']} on {where}, "
            f"experiment {row['experiment']!r}",
        ]
        if row["status"] not in TERMINAL:
            lines.append(f"  follow: %mlops attach {row['id']}   |   "
                         f"jupyter mlops runs logs {row['id']} -f")
            lines.append(f"  cancel: %mlops cancel {row['id']}")
        metrics = self.metrics()
        if metrics:
            lines.append("  metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
        if row["error"] and row["status"] != "completed":
            lines.append("  error: " + row["error"].strip().splitlines()[-1])
        return lines

    def widget(self) -> Any:
        """A live ``RunWidget`` of this run (display it, or let the notebook show it)."""
        from ..widgets import RunWidget

        return RunWidget(self)

    def _ipython_display_(self) -> None:
        # In a notebook a run shows as its live widget; in a terminal as its summary.
        if self.__dict__.pop("_already_shown", False):
            return  # %%train has just displayed this run's widget itself
        from ..widgets import in_kernel, show_run_widget

        if in_kernel():
            show_run_widget(self)
        else:
            print("\n".join(self.summary_lines()))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("\n".join(self.summary_lines()))

    def _repr_html_(self) -> str:
        row = self._row()
        colour = {"completed": "#2e7d32", "failed": "#c62828", "lost": "#c62828",
                  "canceled": "#6d4c41", "pruned": "#6d4c41"}.get(row["status"], "#1565c0")
        badge = (f'<span style="background:{colour};color:white;padding:1px 6px;'
                 f'border-radius:3px">{row["status"]}</span>')
        lines = self.summary_lines()
        rest = "".join(f"<div><code>{html.escape(line.strip())}</code></div>"
                       for line in lines[1:])
        return (
            f"<div><b>Run {html.escape(row['name'])}</b> <code>{row['id']}</code> {badge} "
            f"on {html.escape(row['target'] or 'local')}, experiment "
            f"{html.escape(row['experiment'])}{rest}</div>"
        )


def _fmt(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return f"{value:.6g}"
