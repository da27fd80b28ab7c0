"""``Run``: a handle on one run that reads its state from the store on every access.

A Run never caches status or metrics: the job writes them from another process, so the only
truthful answer is the store's current one. Reading never writes: a run whose job stopped
beating its heartbeat *reads* as ``lost`` (see ``store._liveness``); storing that ending and
cleaning up is the reaper's work (``jobs.reap``), in the processes that own jobs.
"""

from __future__ import annotations

import hashlib
import html
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .._format import fmt_value, run_text, status_colour
from .._inputs import check_destination
from ..errors import NotFound, RunFailed, WorkspaceError
from ..store import TERMINAL, check_served_path

RETURNED = "returned/"  # where a %%train job stores its --outputs (jobs.RETURNED_PREFIX)

if TYPE_CHECKING:
    import pandas as pd

    from ..registry import Dataset, Model
    from ._workspace import Workspace


class Run:
    """A tracked run. Attributes are read from the workspace store each time.

    A Run that came from a listing (``ws.runs()``) also carries ``snapshot``: its
    ``to_dict()`` as the listing read it, so a table of many runs costs a constant number
    of queries. Properties still read fresh.
    """

    def __init__(self, workspace: Workspace, run_id: str,
                 snapshot: dict[str, Any] | None = None):
        self.workspace = workspace
        self.id = run_id
        self.snapshot = snapshot

    # -- state ----------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        return self.workspace.backend.run_row(self.id)

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
        """Every stored field of the run, as one dict (``lost`` derived, as for ``status``)."""
        return self._row()

    def to_dict(self, environment: bool = False) -> dict[str, Any]:
        """The one JSON form of a run (CLI ``--json``, REST): its fields, latest metrics and
        artifacts; the environment (long: every package) only when asked."""
        row = self._row()
        if not environment:
            row.pop("environment", None)
        return {**row, "metrics": self.metrics(), "artifacts": self.artifacts()}

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

    def log_chunks(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The run's output in chunks after chunk id ``after`` (for readers that follow it):
        ``id``, ``stream`` (stdout/stderr) and ``text``, at most ``limit`` chunks."""
        self._row()  # NotFound for a run that does not exist
        return [{"id": i, "stream": stream, "text": text} for i, stream, text in
                self.workspace.store.log_chunks(self.id, after_id=after, limit=limit)]

    # -- artifacts ------------------------------------------------------------------------

    def artifacts(self) -> list[dict[str, Any]]:
        """Stored files: ``path``, ``size``, ``sha256``, ``created_at``."""
        return self.workspace.store.artifacts(self.id)

    def download(self, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Copy an artifact (or every artifact under a folder ``path``) to ``dest``."""
        stored = {a["path"] for a in self.artifacts()}
        prefix = path.rstrip("/") + "/"
        if path in stored:
            return self.workspace.artifacts.download(self.id, path, check_destination(dest))
        inside = sorted(p for p in stored if p.startswith(prefix))
        if not inside:
            names = ", ".join(sorted(stored)) or "none"
            raise NotFound(f"run {self.id} has no artifact {path!r} (it has: {names})")
        dest = check_destination(dest, folder=True)
        for p in inside:
            self.workspace.artifacts.download(self.id, p, dest / p[len(prefix):])
        return dest

    def open_artifact(self, path: str) -> tuple[BinaryIO, int]:
        """An artifact the run recorded, opened for reading, and its size: for serving it
        to others (REST). Only a recorded path is opened, and only inside the run's own
        artifact folder (see ``store.check_served_path`` and ``open_confined``)."""
        path = check_served_path(path)
        if path not in {a["path"] for a in self.artifacts()}:
            self._row()
            raise NotFound(f"run {self.id} has no artifact {path!r}")
        return self.workspace.artifacts.open_confined(self.id, path)

    def outputs(self, names: str | Sequence[str] | None = None) -> dict[str, Any]:
        """The values a ``%%train --outputs a,b`` cell sent back, by name.

        Parameters
        ----------
        names
            One name (``run.outputs("model")``) or a list of names: only those are read.
            None (the default): every output of the run.

        Notes
        -----
        Outputs are pickles (cloudpickle), and loading a pickle runs code of its choosing.
        So, before anything is loaded, every file asked for is checked against the sha256
        recorded when the job stored it (a file changed afterwards is refused), and in a
        shared workspace only outputs of runs you submitted are loaded (of another user's
        runs only with ``c.WorkspaceConfig.trust_other_users_outputs = True``). Load outputs
        only of runs whose code you trust, as you would any pickle.
        """
        import cloudpickle

        stored = {a["path"][len(RETURNED):-len(".pkl")]: a for a in self.artifacts()
                  if a["path"].startswith(RETURNED) and a["path"].endswith(".pkl")}
        wanted = (list(stored) if names is None else [names] if isinstance(names, str)
                  else list(names))
        missing = [n for n in wanted if n not in stored]
        if missing:
            raise NotFound(f"run {self.id} has no output {', '.join(map(repr, missing))} "
                           f"(it has: {', '.join(sorted(stored)) or 'none yet'})")
        if wanted:
            self._check_outputs_owner()
        checked = {name: self._verified_bytes(stored[name]) for name in wanted}
        return {name: cloudpickle.loads(data) for name, data in checked.items()}

    def _check_outputs_owner(self) -> None:
        """Refuse outputs of another user's run (unless configured to trust them): the
        submitting user recorded with the run, and for a local store the files' owner."""
        if self.workspace.config.trust_other_users_outputs:
            return
        from .._environment import current_user

        me = current_user()
        owner = (self._row()["resources"] or {}).get("owner")
        why = None
        if owner is not None and owner != me:
            why = f"was submitted by {owner!r}, not by you ({me!r})"
        elif self.workspace.artifacts.is_local and hasattr(os, "getuid"):
            folder = Path(self.workspace.artifacts.root) / "runs" / self.id / RETURNED
            others = sorted({p.stat().st_uid for p in folder.glob("*.pkl")} - {os.getuid()})
            if others:
                why = f"has outputs written by another user (uid {others[0]}), not by you"
        elif owner is None:
            why = "does not record who submitted it"
        if why:
            raise WorkspaceError(
                f"run {self.id} {why}: its outputs are pickles, and loading one runs its "
                "code; if you trust that user, set c.WorkspaceConfig.trust_other_users_outputs "
                "= True in jupyter_mlops_config.py")

    def _verified_bytes(self, artifact: dict[str, Any]) -> bytes:
        """An artifact's content, refused unless it matches the sha256 recorded for it."""
        with self.workspace.artifacts.open(self.id, artifact["path"]) as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != artifact["sha256"]:
            raise WorkspaceError(
                f"{artifact['path']} of run {self.id} does not match the sha256 recorded when "
                "the run stored it: it was changed afterwards, so it is not loaded (loading a "
                "pickle runs its code); run the cell again to get a trusted copy")
        return data

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

    def follow(self, poll: float = 0.2, logs: bool = True, timeout: float | None = None
               ) -> Iterator[tuple[str, str]]:
        """Follow the run to its end: yields ``("log", text)`` as output arrives and
        ``("status", status)`` at each change, the last one terminal. The one wait loop that
        ``wait()``, ``%%train --wait``, ``%mlops attach`` and ``jupyter mlops runs logs -f``
        share. The status is read before the log, so nothing written before the end is
        missed. ``TimeoutError`` after ``timeout`` seconds, if given."""
        store, last_log, last_status = self.workspace.store, 0, None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status
            if logs:
                for chunk_id, _stream, text in store.log_chunks(self.id, after_id=last_log):
                    last_log = chunk_id
                    yield "log", text
            if status != last_status:
                last_status = status
                yield "status", status
            if status in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still {status} after {timeout} s")
            time.sleep(poll)

    def wait(self, timeout: float | None = None, poll: float = 0.2, raise_on_failure: bool = True
             ) -> Run:
        """Block until the run ends; raise ``RunFailed`` unless it ``completed``."""
        events = list(self.follow(poll=poll, logs=False, timeout=timeout))
        status = events[-1][1]
        if raise_on_failure and status != "completed":
            raise RunFailed(f"run {self.id} ended {status}: {self.last_error_line()}")
        return self

    def last_error_line(self) -> str:
        """The last line of the run's error (the exception of a traceback), or a note."""
        detail = (self.error or "").strip().splitlines()
        return detail[-1] if detail else "no error recorded"

    def cancel(self, wait: bool = False) -> None:
        """Stop the run: a queued run is canceled at once; a running job is asked to stop
        (its runner interrupts, then kills the kernel) and its process tree is killed if it
        has not ended after the target's grace. ``wait=True`` blocks until it has ended."""
        from ..jobs import cancel_run

        cancel_run(self.workspace.backend, self.id, wait=wait)

    # -- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        try:
            row = self._row()
        except NotFound:
            return f"<Run {self.id} missing>"
        return f"<Run {self.id} {row['name']!r} {row['status']}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def describe(self) -> str:
        """Everything about the run, for a terminal (``runs show``, ``%mlops show``)."""
        return run_text(self.to_dict(environment=True),
                        self.workspace.store.latest_metrics(self.id))

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
            lines.append("  metrics: " + ", ".join(f"{k}={fmt_value(v)}"
                                                   for k, v in metrics.items()))
        if row["error"] and row["status"] != "completed":
            lines.append("  error: " + row["error"].strip().splitlines()[-1])
        return lines

    def widget(self, **options: Any) -> Any:
        """A live ``RunWidget`` of this run (display it, or let the notebook show it);
        ``options`` go to ``RunWidget`` (``poll_interval``, ``log_lines``, ``start``)."""
        from ..widgets import RunWidget

        return RunWidget(self.workspace.backend, self.id, **options)

    def _ipython_display_(self) -> None:
        # In a notebook a run shows as its live widget; in a terminal as its summary.
        if self.__dict__.pop("_already_shown", False):
            return  # %%train has just displayed this run's widget itself
        from ..widgets import in_kernel, show_run_widget

        if in_kernel():
            show_run_widget(self.workspace.backend, self.id)
        else:
            print("\n".join(self.summary_lines()))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("\n".join(self.summary_lines()))

    def _repr_html_(self) -> str:
        row = self._row()
        colour = status_colour(row["status"])
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

