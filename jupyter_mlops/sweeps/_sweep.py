"""Creating a sweep, and ``Sweep``: a handle that reads the sweep and its trials from the store.

A sweep is a record in the store plus a detached controller process; its trials are ordinary
runs with ``sweep_id`` set. Everything a Sweep reports is read from the store, so it is the
same from the notebook that started it, from another kernel, or after a crash.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

from .._processes import process_gone
from ..errors import InvalidInput, NotFound, RunFailed
from ..workspace import TERMINAL, Run, Workspace
from ._policies import parse_policy
from ._space import parse_space

if TYPE_CHECKING:
    import pandas as pd

SAMPLERS = ("random", "grid", "tpe")
GOALS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


@dataclass
class SweepSpec:
    """What the controller needs; stored as JSON in the sweep's row."""

    space: dict[str, str]  # name -> expression, e.g. "loguniform(1e-4, 1e-1)"
    metric: str
    goal: str  # "maximize" | "minimize"
    sampler: str = "random"
    trials: int = 20
    concurrency: int = 2
    policy: str = "none"
    target: str = "local"
    gpus: int = 0
    retry_failed: int = 0
    seed: int | None = None
    timeout: float | None = None  # per trial
    parameters: dict[str, Any] = field(default_factory=dict)  # fixed for every trial
    source: str = ""  # where the code came from (a cell, a run, a notebook path)
    cwd: str | None = None
    kernel_name: str | None = None

    def validate(self) -> None:
        space = parse_space(self.space)
        parse_policy(self.policy)
        if self.goal not in GOALS:
            raise InvalidInput(f"--goal takes max or min, got {self.goal!r}")
        self.goal = GOALS[self.goal]
        if not self.metric or not isinstance(self.metric, str):
            raise InvalidInput("--metric names the metric the trials log, e.g. --metric accuracy")
        if self.sampler not in SAMPLERS:
            raise InvalidInput(f"--sampler takes one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "grid":
            size = math.prod(len(p.grid_values()) for p in space.values())
            self.trials = min(self.trials, size)
        for flag, value in (("--trials", self.trials), ("--concurrency", self.concurrency)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{flag} must be a positive integer, got {value!r}")
        if self.retry_failed < 0:
            raise InvalidInput("--retry-failed must not be negative")
        overlap = set(space) & set(self.parameters)
        if overlap:
            raise InvalidInput(f"{', '.join(sorted(overlap))} is both swept and fixed with -p")
        from ..compute import get_target

        get_target(self.target).validate(self.gpus)


def sweep_dir(ws: Workspace, sweep_id: str) -> Path:
    return ws.location.directory / "staging" / "sweeps" / sweep_id


def create_sweep(ws: Workspace, notebook: nbformat.NotebookNode, spec: SweepSpec, *,
                 name: str | None = None, experiment: str = "Default",
                 carried_from: Path | None = None, start: bool = True) -> Sweep:
    """Record a sweep over ``notebook`` and start its controller. Validates everything first,
    so a bad space or policy stores nothing."""
    spec.validate()
    sweep_id = "sw" + uuid.uuid4().hex[:10]
    folder = sweep_dir(ws, sweep_id)
    folder.mkdir(parents=True)
    try:
        nbformat.write(notebook, folder / "base.ipynb")
        if carried_from is not None and carried_from.is_dir():
            shutil.copytree(carried_from, folder / "carried", copy_function=_link_or_copy)
        ws.store.create_sweep(sweep_id, name or f"sweep-{sweep_id[2:8]}", experiment,
                              asdict(spec))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    sweep = Sweep(ws, sweep_id)
    if start:
        sweep.start_controller()
    return sweep


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # carried data can be big; trials share it
    except OSError:
        shutil.copy2(src, dst)


class Sweep:
    """A hyperparameter sweep. ``best_run``, ``to_dataframe()``, ``wait()``, ``resume()``."""

    def __init__(self, workspace: Workspace, sweep_id: str):
        self.workspace = workspace
        self.id = sweep_id

    # -- state ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        row = self.workspace.store.get_sweep_row(self.id)
        if row is None:
            raise NotFound(f"no sweep with id {self.id!r}")
        if row["status"] in ("queued", "running") and self._controller_gone(row):
            self.workspace.store.set_sweep_status(
                self.id, "lost", only_from=("queued", "running"),
                error="the sweep controller stopped without finishing; resume() continues it")
            row = self.workspace.store.get_sweep_row(self.id) or row
        return row

    def _controller_gone(self, row: dict[str, Any]) -> bool:
        beat = row["heartbeat_at"] or row["created_at"]
        if time.time() - beat > self.workspace.config.lost_after:
            return True
        return bool(row["host"] == socket.gethostname() and row["pid"]
                    and row["heartbeat_at"] and process_gone(row["pid"]))

    @property
    def name(self) -> str:
        return self.info()["name"]

    @property
    def status(self) -> str:
        return self.info()["status"]

    @property
    def spec(self) -> SweepSpec:
        return SweepSpec(**self.info()["spec"])

    def trials(self) -> list[Run]:
        return [Run(self.workspace, r["id"]) for r in self.workspace.store.sweep_trials(self.id)]

    def trial_rows(self) -> list[dict[str, Any]]:
        """One dict per trial: run row, final and best metric, steps logged."""
        spec = self.spec
        store = self.workspace.store
        maximize = spec.goal == "maximize"
        rows = []
        for row in store.sweep_trials(self.id):
            history = store.metric_rows(row["id"], key=spec.metric)
            values = [v for *_, v, _w in history if not math.isnan(v)]
            final = history[-1][3] if history else None
            best = (max(values) if maximize else min(values)) if values else None
            rows.append({**row, "final": final, "best": best,
                         "steps": history[-1][2] + 1 if history else 0})
        return rows

    def progress(self) -> dict[str, int]:
        counts = {"total": self.spec.trials, "done": 0, "running": 0, "queued": 0,
                  "pruned": 0, "failed": 0}
        for row in self.workspace.store.sweep_trials(self.id):
            status = row["status"]
            if status == "completed":
                counts["done"] += 1
            elif status == "pruned":
                counts["pruned"] += 1
            elif status in ("failed", "lost", "canceled"):
                counts["failed"] += 1
            elif status == "queued":
                counts["queued"] += 1
            else:
                counts["running"] += 1
        return counts

    @property
    def best_run(self) -> Run | None:
        """The completed trial with the best final value of the metric."""
        spec = self.spec
        done = [r for r in self.trial_rows()
                if r["status"] == "completed" and r["final"] is not None
                and not math.isnan(r["final"])]
        if not done:
            return None
        pick = max if spec.goal == "maximize" else min
        return Run(self.workspace, pick(done, key=lambda r: r["final"])["id"])

    def to_dataframe(self) -> pd.DataFrame:
        """Trials ranked by the metric (best first): params, status, final and best values,
        and for stopped trials the reason in words."""
        import pandas as pd

        spec = self.spec
        records = []
        for row in self.trial_rows():
            record = {"trial": row["trial_number"], "run_id": row["id"], "status": row["status"],
                      spec.metric: row["final"], f"best_{spec.metric}": row["best"],
                      "steps": row["steps"]}
            record.update({f"param.{k}": v for k, v in row["params"].items()
                           if k in spec.space})
            record["reason"] = row["error"] if row["status"] != "completed" else None
            records.append(record)
        frame = pd.DataFrame.from_records(records)
        if len(frame):
            frame = frame.sort_values(spec.metric, ascending=spec.goal == "minimize",
                                      na_position="last", kind="stable").reset_index(drop=True)
        return frame

    # -- control --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> Sweep:
        """Block until the sweep ends; raise ``RunFailed`` if it did not complete."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} still {status} after {timeout} s")
            time.sleep(poll)
        if status != "completed":
            raise RunFailed(f"sweep {self.id} ended {status}: {self.info()['error'] or ''}")
        return self

    def cancel(self) -> None:
        """Stop the sweep: no new trials; running trials are asked to stop."""
        if self.workspace.store.set_sweep_status(self.id, "canceled", only_from=("queued",)):
            return
        self.workspace.store.update_sweep(self.id, cancel_requested_at=time.time())

    def resume(self) -> Sweep:
        """Restart the controller of a sweep that stopped (a crash, a killed process).
        Finished trials are kept and not repeated; trials still running are followed."""
        row = self.info()
        if row["status"] == "completed":
            return self
        if row["status"] in ("queued", "running"):
            return self  # its controller is alive
        self.workspace.store.set_sweep_status(
            self.id, "queued", only_from=("lost", "failed", "canceled"), error=None,
            ended_at=None, cancel_requested_at=None, heartbeat_at=time.time(),
            pid=None, host=None)  # the dead controller's pid must not condemn the new one
        self.start_controller()
        return self

    def start_controller(self) -> subprocess.Popen:
        ws = self.workspace
        folder = sweep_dir(ws, self.id)
        env = {**os.environ, **ws.location.to_env()}
        env.pop("JUPYTER_MLOPS_RUN_ID", None)
        with open(folder / "controller.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "jupyter_mlops.sweeps.controller", self.id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=env, cwd=str(folder))

    # -- display --------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        row, p = self.info(), self.progress()
        spec = SweepSpec(**row["spec"])
        lines = [f"Sweep {row['name']} ({row['id']}) — {row['status']}: {p['done']} done, "
                 f"{p['running']} running, {p['queued']} queued, {p['pruned']} pruned, "
                 f"{p['failed']} failed of {p['total']}; {spec.goal} {spec.metric}"]
        best = self.best_run
        if best is not None:
            lines.append(f"  best: {best.name} ({best.id}) {spec.metric}="
                         f"{best.metrics().get(spec.metric)} params={best.params}")
        return lines

    def __repr__(self) -> str:
        return f"<Sweep {self.id}>"

    def _ipython_display_(self) -> None:
        from ..widgets import in_kernel

        if in_kernel():
            from ..widgets import show_live
            from ._widget import SweepWidget

            show_live(SweepWidget(self))
        else:
            print("\n".join(self.summary_lines()))
