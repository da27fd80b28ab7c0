"""Sweep services: creating a sweep, starting its controller, and reading its leaderboard.

A sweep is a record in the store plus a detached controller process; its trials are ordinary
runs with ``sweep_id`` set. Everything here reads the store, so a sweep looks the same from
the notebook that started it, from another kernel, or after a crash. The ``Sweep`` object
users hold is the API facade's (``jupyter_mlops.api``), built on these functions.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._format import fmt_value
from .._processes import spawn_detached
from ..errors import InvalidInput, NotFound
from ..jobs._notebook import write_notebook
from ..store import ENV_HEADLESS, ENV_RUN_ID, Backend, as_read, database_error
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
    # Set for a sweep started inside a headless job (a notebook run by `jupyter mlops run`):
    # that job only waits for the sweep, so its trials run on its slots, as a %%train child's
    # do, instead of queueing behind them (with one slot that would never end).
    parent_resources: dict[str, Any] | None = None
    # Names the code reads from the notebook, stored once in the artifact store for all the
    # trials (``carried/<name>.pkl`` of the sweep), beside its ``base.ipynb``.
    carried: list[str] = field(default_factory=list)

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


def sweep_dir(backend: Backend, sweep_id: str) -> Path:
    return backend.location.directory / "staging" / "sweeps" / sweep_id


def start_sweep(backend: Backend, code_or_notebook: Any, *, space: dict[str, str], metric: str,
                goal: str = "max", sampler: str = "random", trials: int = 20,
                concurrency: int = 2, policy: str = "none", from_run: str | None = None,
                namespace: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
                target: str = "local", gpus: int = 0, retry_failed: int = 0,
                seed: int | None = None, timeout: float | None = None,
                name: str | None = None, experiment: str = "Default") -> str:
    """Record a sweep over a cell, a notebook or an earlier run's code, and start its
    controller; returns the sweep's id. See ``Workspace.sweep``."""
    from ._sources import sweep_source

    notebook, carried, source, cwd = sweep_source(
        backend, code_or_notebook, from_run=from_run, namespace=namespace,
        swept=list(space), fixed=fixed or {})
    spec = SweepSpec(space=space, metric=metric, goal=goal, sampler=sampler, trials=trials,
                     concurrency=concurrency, policy=policy, target=target, gpus=gpus,
                     retry_failed=retry_failed, seed=seed, timeout=timeout,
                     parameters=dict(fixed or {}), source=source, cwd=cwd)
    _lend_headless_parent_slots(backend, spec)
    try:
        return create_sweep(backend, notebook, spec, name=name, experiment=experiment,
                            carried_from=carried)
    finally:
        if carried is not None:
            shutil.rmtree(carried.parent, ignore_errors=True)  # a temporary copy


def _lend_headless_parent_slots(backend: Backend, spec: SweepSpec) -> None:
    """Inside a headless job, run the trials on the job's own slots, as many at once as it
    holds (the job blocks until the sweep ends, so its slots would otherwise sit idle while
    the trials wait for them)."""
    parent_id = os.environ.get(ENV_RUN_ID)
    if os.environ.get(ENV_HEADLESS) != "1" or not parent_id:
        return
    row = backend.store.get_run_row(parent_id)
    resources = (row or {}).get("resources") or {}
    slots = resources.get("slots") or []
    if not slots:
        return
    spec.parent_resources = {"slots": list(slots),
                             "cuda_visible_devices": resources.get("cuda_visible_devices")}
    spec.concurrency = max(1, min(spec.concurrency, len(slots)))


def create_sweep(backend: Backend, notebook: dict[str, Any], spec: SweepSpec, *,
                 name: str | None = None, experiment: str = "Default",
                 carried_from: Path | None = None, start: bool = True) -> str:
    """Record a sweep over ``notebook`` and start its controller. Validates everything first,
    so a bad space or policy stores nothing."""
    spec.validate()
    sweep_id = "sw" + uuid.uuid4().hex[:10]
    folder = sweep_dir(backend, sweep_id)
    try:
        folder.mkdir(parents=True)
        write_notebook(notebook, folder / "base.ipynb")
        if carried_from is not None and carried_from.is_dir():
            shutil.copytree(carried_from, folder / "carried", copy_function=link_or_copy)
        store_sweep_inputs(backend, sweep_id, folder, spec)
        backend.store.create_sweep(sweep_id, name or f"sweep-{sweep_id[2:8]}", experiment,
                                   asdict(spec))
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, (OSError, shutil.Error)):  # a full disk, a read-only folder
            raise database_error(backend.location, exc) from None
        raise
    if start:
        start_controller(backend, sweep_id)
    return sweep_id


def store_sweep_inputs(backend: Backend, sweep_id: str, folder: Path, spec: SweepSpec) -> None:
    """Keep the sweep's base notebook and carried names in the artifact store, so that its
    controller, restarted on another machine, and trials on any node find them there."""
    spec.carried = sorted(p.stem for p in (folder / "carried").glob("*.pkl"))
    files = [folder / "base.ipynb", *(folder / "carried" / f"{n}.pkl" for n in spec.carried)]
    for path in files:
        backend.artifacts.put_file(sweep_id, path.relative_to(folder).as_posix(), path,
                                   area="sweeps")


def fetch_sweep_inputs(backend: Backend, sweep_id: str, spec: SweepSpec) -> Path:
    """The sweep's local folder with its base notebook and carried names, fetched from the
    artifact store unless they are already here (the machine that created the sweep)."""
    folder = sweep_dir(backend, sweep_id)
    for rel in ("base.ipynb", *(f"carried/{n}.pkl" for n in spec.carried)):
        if not (folder / rel).exists():
            backend.artifacts.download(sweep_id, rel, folder / rel, area="sweeps")
    return folder


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # carried data can be big; trials share it
    except OSError:
        shutil.copy2(src, dst)


def start_controller(backend: Backend, sweep_id: str) -> None:
    """Start the sweep's controller process, detached."""
    folder = sweep_dir(backend, sweep_id)
    env = {**os.environ, **backend.location.to_env()}
    env.pop(ENV_RUN_ID, None)
    spawn_detached([sys.executable, "-m", "jupyter_mlops.sweeps.controller", sweep_id],
                   env=env, cwd=folder, log=folder / "controller.log")


# -- reading ------------------------------------------------------------------------------


def sweep_row(backend: Backend, sweep_id: str) -> dict[str, Any]:
    """The sweep's row as readers see it: a controller that is gone reads as ``lost``."""
    row = backend.store.get_sweep_row(sweep_id)
    if row is None:
        raise NotFound(f"no sweep with id {sweep_id!r}")
    return as_read(row, backend.config.lost_after,
                   reread=lambda: backend.store.get_sweep_row(sweep_id),
                   now=backend.store.clock())


def trial_rows(backend: Backend, sweep_id: str, spec: SweepSpec | None = None
               ) -> list[dict[str, Any]]:
    """One dict per trial (in trial order): its run row as readers see it, with the
    ``final`` and ``best`` value of the sweep's metric and the ``steps`` it logged.

    Two queries however long the trials' histories: the leaderboard polls this every second.
    """
    spec = spec or SweepSpec(**sweep_row(backend, sweep_id)["spec"])
    store = backend.store
    now = store.clock()
    rows = [backend.as_read(row, now) for row in store.sweep_trials(sweep_id)]
    summaries = store.metric_summaries([row["id"] for row in rows], spec.metric)
    maximize = spec.goal == "maximize"
    found = []
    for row in rows:
        summary = summaries.get(row["id"])
        if summary is None:
            found.append({**row, "final": None, "best": None, "steps": 0})
            continue
        found.append({**row, "final": summary["last"],
                      "best": summary["max"] if maximize else summary["min"],
                      "steps": summary["last_step"] + 1})
    return found


def progress(rows: list[dict[str, Any]], total: int) -> dict[str, int]:
    """Counts of trials by state, from ``trial_rows``."""
    counts = {"total": total, "done": 0, "running": 0, "queued": 0, "pruned": 0, "failed": 0}
    for row in rows:
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


def best_trial(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    """The completed trial with the best final value of the metric."""
    done = [r for r in rows if r["status"] == "completed" and r["final"] is not None
            and not math.isnan(r["final"])]
    if not done:
        return None
    pick = max if spec.goal == "maximize" else min
    return pick(done, key=lambda r: r["final"])


def summary_lines(row: dict[str, Any], rows: list[dict[str, Any]], spec: SweepSpec
                  ) -> list[str]:
    """The text form of a sweep: status, counts of trials, and the best one so far."""
    p = progress(rows, spec.trials)
    lines = [f"Sweep {row['name']} ({row['id']}) — {row['status']}: {p['done']} done, "
             f"{p['running']} running, {p['queued']} queued, {p['pruned']} pruned, "
             f"{p['failed']} failed of {p['total']}; {spec.goal} {spec.metric}"]
    best = best_trial(rows, spec)
    if best is not None:
        lines.append(f"  best: {best['name']} ({best['id']}) {spec.metric}="
                     f"{fmt_value(best['final'])} params={best['params']}")
    return lines


def leaderboard(rows: list[dict[str, Any]], spec: SweepSpec) -> pd.DataFrame:
    """Trials ranked by the metric (best first): params, status, final and best values,
    and for stopped trials the reason in words."""
    import pandas as pd

    records = []
    for row in rows:
        record = {"trial": row["trial_number"], "run_id": row["id"], "status": row["status"],
                  spec.metric: row["final"], f"best_{spec.metric}": row["best"],
                  "steps": row["steps"]}
        record.update({f"param.{k}": v for k, v in row["params"].items() if k in spec.space})
        record["reason"] = row["error"] if row["status"] != "completed" else None
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if len(frame):
        frame = frame.sort_values(spec.metric, ascending=spec.goal == "minimize",
                                  na_position="last", kind="stable").reset_index(drop=True)
    return frame


# -- control ------------------------------------------------------------------------------


def cancel_sweep(backend: Backend, sweep_id: str) -> None:
    """Stop the sweep: no new trials; its controller asks running trials to stop."""
    if backend.store.set_sweep_status(sweep_id, "canceled", only_from=("queued",)):
        return
    backend.store.update_sweep(sweep_id, cancel_requested_at=time.time())


def resume_sweep(backend: Backend, sweep_id: str) -> None:
    """Restart the controller of a sweep that stopped (a crash, a killed process).
    Finished trials are kept and not repeated; trials still running are followed."""
    row = sweep_row(backend, sweep_id)
    if row["status"] in ("completed", "queued", "running"):
        return  # finished, or its controller is alive
    backend.store.set_sweep_status(
        sweep_id, "queued", only_from=("lost", "failed", "canceled", "queued", "running"),
        error=None, ended_at=None, cancel_requested_at=None, heartbeat_at=time.time(),
        pid=None, host=None)  # the dead controller's pid must not condemn the new one
    start_controller(backend, sweep_id)
