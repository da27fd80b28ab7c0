"""``Workspace``: the facade users hold. It composes the services over one ``Backend``.

The magics, the CLI and (later) the REST server call only this: one write path
(``submit``, ``Run.cancel``, ``sweep``, ``gate``), one JSON form per object (``to_dict``).
Services below it receive the ``Backend``, never the facade.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._format import fmt_value, runs_frame
from .._inputs import (
    check_name,
    check_params,
    check_tags,
    check_timeout,
    normalize_name,
    parse_datasets,
)
from ..errors import InvalidInput, NotFound
from ..store import (
    ACTIVE,
    ALL_STATUSES,
    ENV_RUN_ID,
    Backend,
    WorkspaceConfig,
    WorkspaceLocation,
    load_config,
    resolve_location,
)
from ._run import Run

if TYPE_CHECKING:
    import pandas as pd

    from ..registry import DatasetRegistry, Lineage, RunDiff
    from ._endpoint import Endpoint
    from ._registry import ModelRegistry
    from ._sweep import Sweep

_cache: dict[WorkspaceLocation, Workspace] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class GateResult:
    """What ``ws.gate`` judged: ``passed``, the ``value`` and a one-line ``message``."""

    passed: bool
    metric: str
    value: float
    run_id: str
    message: str

    def __bool__(self) -> bool:
        return self.passed


class Workspace:
    """A database plus an artifact store. Get one with ``jupyter_mlops.workspace()``."""

    def __init__(self, location: WorkspaceLocation, config: WorkspaceConfig | None = None):
        self.backend = Backend(location, config)

    @property
    def location(self) -> WorkspaceLocation:
        return self.backend.location

    @property
    def config(self) -> WorkspaceConfig:
        return self.backend.config

    @property
    def store(self) -> Any:
        """The SQL store (``store.Store``): for tools and tests that need raw rows."""
        return self.backend.store

    @property
    def artifacts(self) -> Any:
        return self.backend.artifacts

    def __repr__(self) -> str:
        return f"<Workspace {self.location.directory}>"

    # -- writing: runs --------------------------------------------------------------------

    def submit(
        self,
        code_or_notebook: str | os.PathLike[str] | Any,
        *,
        params: dict[str, Any] | None = None,
        name: str | None = None,
        experiment: str | None = None,
        tags: dict[str, Any] | None = None,
        target: str | None = None,
        gpus: int = 0,
        datasets: list[str] | list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        timeout: float | None = None,
        namespace: dict[str, Any] | None = None,
        kernel: str | None = None,
        parent: str | None = None,
        history: list[str] | None = None,
        origin: str = "",
        max_carry_bytes: int | None = None,
    ) -> Run:
        """Run a notebook (a path ending ``.ipynb`` or a notebook node) or a cell's code as
        a tracked job on ``target`` (default: ``JUPYTER_MLOPS_TARGET`` or
        ``c.ComputeConfig.default_target``, else ``local``); returns the ``queued`` Run at once.

        This is what ``%%train``, ``jupyter mlops run`` and every other surface call. A
        cell's code reads names from ``namespace`` (the notebook's variables), which are
        carried to the job; ``outputs`` come back with ``Run.outputs()``. A notebook gets
        ``params`` papermill-style. Nothing is stored when the input is refused.
        """
        from ..compute import default_target
        from ..jobs import read_notebook, submit_cell, submit_notebook, watch

        target = target or default_target()
        params = check_params(params or {})
        tags = check_tags(tags or {})
        timeout = check_timeout(timeout)
        pinned = parse_datasets(datasets or [])
        parent = parent if parent is not None else os.environ.get(ENV_RUN_ID) or None
        notebook, path = self._as_notebook(code_or_notebook, read_notebook)
        if notebook is not None:
            if outputs:
                raise InvalidInput("outputs= applies to a cell's code; a notebook run keeps "
                                   "its files under mlops.outputs_dir()")
            stem = path.stem if path is not None else "notebook"
            run_id = submit_notebook(
                self.backend, notebook, name=check_name(name or stem, "run name"),
                experiment=check_name(experiment or "Default", "experiment name"),
                parameters=params, tags=tags, kind="notebook",
                source=str(path) if path is not None else None,
                cwd=str(path.parent) if path is not None else os.getcwd(),
                timeout=timeout, kernel_name=kernel, target=target, gpus=gpus,
                parent_id=parent, datasets=pinned)
            watch(self.backend)
            return Run(self, run_id)
        code = str(code_or_notebook)
        run_id = submit_cell(
            self.backend, code, namespace=namespace or {}, parameters=params,
            name=check_name(name or "cell", "run name"),
            experiment=check_name(experiment or "Default", "experiment name"),
            tags=tags, target=target, gpus=gpus, outputs=list(outputs or []),
            timeout=timeout, datasets=pinned, history=history, origin=origin,
            parent_id=parent, kernel_name=kernel, **({"max_carry_bytes": max_carry_bytes}
                                 if max_carry_bytes is not None else {}))
        watch(self.backend)  # this process reaps while its runs are active
        return Run(self, run_id)

    @staticmethod
    def _as_notebook(source: Any, read_notebook: Any) -> tuple[Any, Path | None]:
        """(notebook, its path) when ``source`` is a notebook, else (None, None)."""
        if isinstance(source, os.PathLike) or (
                isinstance(source, str) and source.endswith(".ipynb") and "\n" not in source):
            path = Path(source).resolve()
            return read_notebook(path), path
        if isinstance(source, dict) and "cells" in source:
            return source, None
        if not isinstance(source, str):
            raise InvalidInput(f"submit takes a notebook path, a notebook or a cell's code, "
                               f"got {type(source).__name__}")
        return None, None

    def gate(self, *, metric: str, run: str | Run | None = None, model: str | None = None,
             min: float | None = None, max: float | None = None) -> GateResult:
        """Judge a run's latest ``metric`` (or that of the run behind a model version)
        against bounds: for CI pipelines (``jupyter mlops gate`` exits 1 when it fails)."""
        if min is None and max is None:
            raise InvalidInput("gate needs --min X or --max X")
        if (run is None) == (model is None):
            raise InvalidInput("gate needs --run RUN or --model NAME[:VERSION] (one of them)")
        if model is not None:
            found = self.models.get(model)
            if found.run_id is None:
                raise NotFound(f"model {found.ref} was registered from {found.source}, not "
                               "from a run: it has no metrics to gate on")
            judged = self.get_run(found.run_id)
        else:
            judged = run if isinstance(run, Run) else self.get_run(str(run))
        metrics = judged.metrics()
        if metric not in metrics:
            known = ", ".join(sorted(metrics)) or "none"
            raise NotFound(f"run {judged.id} has no metric {metric!r} (it has: {known})")
        value = metrics[metric]
        failures = []
        if math.isnan(value):
            failures.append("is NaN")
        if min is not None and not value >= min:
            failures.append(f"is below the minimum {fmt_value(min)}")
        if max is not None and not value <= max:
            failures.append(f"is above the maximum {fmt_value(max)}")
        where = f"{metric} of run {judged.id} ({judged.name}) = {fmt_value(value)}"
        if model is not None:
            where = f"{metric} of model {model} (run {judged.id}) = {fmt_value(value)}"
        message = (f"gate failed: {where} {' and '.join(failures)}" if failures
                   else f"gate passed: {where}")
        return GateResult(not failures, metric, value, judged.id, message)

    # -- reading: runs --------------------------------------------------------------------

    def get_run(self, ref: str | Run) -> Run:
        """A run by id, by name (the newest run of that name), or by a unique prefix of
        its id or name."""
        if isinstance(ref, Run):
            return ref
        return Run(self, self.backend.find_run(ref)["id"])

    def runs(
        self,
        experiment: str | None = None,
        status: str | list[str] | None = None,
        tags: dict[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """Runs, newest first, filtered by experiment, status and tags; paged in SQL with
        ``limit`` and ``offset``. Each carries ``snapshot`` (its ``to_dict()`` without
        artifacts, as listed), read in a constant number of queries however many runs."""
        statuses = self._check_statuses(status)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidInput(f"limit must be a whole number >= 0, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"offset must be a whole number >= 0, got {offset!r}")
        rows = self.backend.list_runs(experiment=experiment, status=statuses or None,
                                      tags=tags, limit=limit, offset=offset)
        return [Run(self, row["id"], snapshot=row) for row in rows]

    def runs_page(
        self,
        experiment: str | None = None,
        status: str | list[str] | None = None,
        tags: dict[str, Any] | None = None,
        q: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Run], str | None]:
        """One page of runs, newest first, and the cursor of the next page (None after the
        last). Paged by keyset on (created_at, id), not by offset: paging through a
        workspace while runs are created returns each run exactly once, and a deep page
        costs what the first does. ``q`` keeps runs whose name or params contain it."""
        statuses = self._check_statuses(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be a whole number from 1 to 1000, got {limit!r}")
        rows, after = self.backend.runs_page(
            experiment=experiment, status=statuses or None, tags=tags, text=q or None,
            limit=limit, before=_decode_run_cursor(cursor) if cursor else None)
        return ([Run(self, row["id"], snapshot=row) for row in rows],
                _encode_run_cursor(after) if after else None)

    @staticmethod
    def _check_statuses(status: str | list[str] | None) -> list[str]:
        statuses = [status] if isinstance(status, str) else list(status or [])
        for s in statuses:
            if s not in ALL_STATUSES:
                raise InvalidInput(f"unknown status {s!r}; use one of {', '.join(ALL_STATUSES)}")
        return statuses

    def metric_series(self, run: str | Run, keys: list[str] | None = None,
                      max_points: int = 2000) -> dict[str, dict[str, Any]]:
        """Each metric of a run (``keys``, default all) as ``{"step": [...], "value": [...],
        "points": total}``, downsampled to at most ``max_points`` keeping every bucket's
        minimum and maximum. Series are kept in memory and extended with new points only,
        so charts polled again cost a downsample of memory, not a database read."""
        if isinstance(max_points, bool) or not isinstance(max_points, int) or not (
                4 <= max_points <= 100_000):
            raise InvalidInput(f"max_points must be a whole number from 4 to 100000, "
                               f"got {max_points!r}")
        run = self.get_run(run) if not isinstance(run, Run) else run
        found = self._series_cache().downsampled(run.id, keys, max_points)
        missing = [k for k in keys or [] if k not in found]
        if missing:
            known = self._series_cache().series(run.id)
            raise NotFound(f"run {run.id} has no metric {', '.join(map(repr, missing))} "
                           f"(it has: {', '.join(sorted(known)) or 'none'})")
        return {key: {"step": x.astype("int64").tolist(), "value": y.tolist(), "points": n}
                for key, (x, y, n) in found.items()}

    def _series_cache(self) -> Any:
        cache = self.__dict__.get("_series")
        if cache is None:
            from ..widgets import SeriesCache

            with _cache_lock:
                cache = self.__dict__.setdefault("_series", SeriesCache(self.backend))
        return cache

    def events(self, since: str | None = None, limit: int = 500) -> dict[str, Any]:
        """What changed since the cursor ``since`` (None: nothing yet, just the cursor to
        follow from): ``events`` (runs created and changing status, sweeps, model and
        dataset versions, endpoints), in the order they happened; ``metrics``, each run
        that logged points (its newest metric id and how many); ``lost``, active runs whose
        job is gone (derived at this read, so repeated until the reaper stores it); and the
        next ``cursor``. ``more`` says another call has more at once."""
        store = self.store
        if since is None:
            newest_event, newest_metric = store.feed_heads()
            return {"cursor": f"{newest_event}-{newest_metric}", "events": [], "metrics": [],
                    "lost": [], "more": False}
        event_id, metric_id = _decode_feed_cursor(since)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 5000:
            raise InvalidInput(f"limit must be a whole number from 1 to 5000, got {limit!r}")
        rows = store.events(event_id, limit)
        newest_metric = store.feed_heads()[1]
        next_metric = max(metric_id, min(newest_metric, metric_id + _METRIC_WINDOW))
        metrics = store.metrics_since(metric_id, next_metric)
        now = store.clock()  # once for the listing (a query on PostgreSQL)
        lost = [row["id"] for row in store.list_runs(status=ACTIVE)
                if self.backend.as_read(row, now)["status"] == "lost"]
        more = len(rows) == limit or next_metric < newest_metric
        return {
            "cursor": f"{rows[-1]['id'] if rows else event_id}-{next_metric}",
            "events": [{"id": r["id"], "kind": r["kind"], "subject": r["subject"],
                        "wall_time": r["wall_time"], **(r["payload"] or {})} for r in rows],
            "metrics": [{"run_id": run_id, "last_id": newest, "points": count}
                        for run_id, newest, count in metrics],
            "lost": lost,
            "more": more,
        }

    def runs_dataframe(
        self,
        experiment: str | None = None,
        status: str | list[str] | None = None,
        tags: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per run: id, name, experiment, status, times, ``param.*``, ``tag.*`` and
        ``metric.*`` columns (latest values) — ready to sort and compare."""
        runs = self.runs(experiment=experiment, status=status, tags=tags, limit=limit)
        return runs_frame([run.snapshot for run in runs])

    def experiments(self) -> list[dict[str, Any]]:
        return self.store.experiments()

    # -- registry: models, datasets, lineage ------------------------------------------------

    @property
    def models(self) -> ModelRegistry:
        """The model registry: ``ws.models.register/list/get``."""
        from ._registry import ModelRegistry

        return ModelRegistry(self)

    @property
    def datasets(self) -> DatasetRegistry:
        """Versioned datasets: ``ws.datasets.register/list/get``."""
        from ._registry import DatasetRegistry

        return DatasetRegistry(self)

    def lineage(self, model: Any = None, run: Any = None) -> Lineage:
        """What made a model version (``model="mnist:3"``) or a run: run, code snapshot,
        params, environment, dataset versions, parent sweep."""
        from ..registry import lineage

        return lineage(self.backend, model=_ref(model), run=_ref(run))

    def diff_runs(self, run_a: Any, run_b: Any) -> RunDiff:
        """Differences between two runs in params, metrics, environment, packages,
        datasets and code."""
        from ..registry import diff_runs

        return diff_runs(self.backend, self.get_run(run_a).id, self.get_run(run_b).id)

    # -- sweeps ---------------------------------------------------------------------------

    def sweep(
        self,
        code_or_notebook: str | os.PathLike[str] | Any | None = None,
        *,
        params: dict[str, str] | list[str],
        metric: str,
        goal: str = "max",
        sampler: str = "random",
        trials: int = 20,
        concurrency: int = 2,
        policy: str = "none",
        from_run: str | None = None,
        namespace: dict[str, Any] | None = None,
        fixed: dict[str, Any] | None = None,
        target: str | None = None,
        gpus: int = 0,
        retry_failed: int = 0,
        seed: int | None = None,
        timeout: float | None = None,
        name: str | None = None,
        experiment: str = "Default",
    ) -> Sweep:
        """Start a hyperparameter sweep; returns a ``Sweep`` at once (its controller runs
        detached). The code is a notebook path, a notebook node, a cell's source (names it
        reads are carried from ``namespace``), or the code of an earlier run (``from_run``)."""
        from ..compute import default_target
        from ..sweeps import start_sweep
        from ._sweep import Sweep

        target = target or default_target()
        if isinstance(params, dict):
            space = dict(params)
        else:
            space = {p.partition("=")[0].strip(): p.partition("=")[2].strip() for p in params}
        source_run = self.get_run(from_run).id if from_run is not None else None
        sweep_id = start_sweep(
            self.backend, code_or_notebook, space=space, metric=metric, goal=goal,
            sampler=sampler, trials=trials, concurrency=concurrency, policy=policy,
            from_run=source_run, namespace=namespace, fixed=check_params(fixed or {}),
            target=target, gpus=gpus, retry_failed=retry_failed, seed=seed,
            timeout=check_timeout(timeout),
            name=check_name(name, "sweep name") if name is not None else None,
            experiment=check_name(experiment, "experiment name"))
        from ..jobs import watch

        watch(self.backend)
        return Sweep(self, sweep_id)

    def get_sweep(self, ref: str) -> Sweep:
        """A sweep by id, by name (the newest of that name) or by a unique prefix."""
        from ._sweep import Sweep

        return Sweep(self, self.backend.find_sweep(ref)["id"])

    def sweeps(self, experiment: str | None = None) -> list[Sweep]:
        from ._sweep import Sweep

        if experiment is not None:
            experiment = normalize_name(str(experiment))
        return [Sweep(self, r["id"]) for r in self.store.list_sweeps(experiment=experiment)]

    # -- serving ------------------------------------------------------------------------

    def deploy(self, model: Any, entry: str | os.PathLike[str] | None = None, *,
               entry_source: str | None = None, name: str | None = None,
               host: str = "127.0.0.1", port: int = 0, cores: float = 1,
               memory: str | int | None = None, replicas: int = 1, auth: bool = True,
               namespace: dict[str, Any] | None = None, wait: bool = True,
               timeout: float = 300.0, target: str | None = None,
               min_replicas: int | None = None, max_replicas: int | None = None) -> Endpoint:
        """Serve a registered model (``"digits"``, ``"digits:3"``, ``"digits@production"``
        or a ``Model``) over HTTP from an entry script with ``init()`` and ``run(raw_data)``
        (a path, or ``entry_source``; default: chosen by the model's files). Deploying a
        name that is served already swaps it, without failed requests. Returns the
        ``Endpoint`` once it serves (``wait=False``: at once). With ``entry_source`` and
        ``namespace`` (``%%deploy``), the names the script reads from the notebook are
        carried to the server as ``%%train`` carries them. ``target="ray"`` serves it on
        Ray Serve: ``replicas`` replicas across the cluster, or autoscaled between
        ``min_replicas`` and ``max_replicas`` (default target: as for runs)."""
        from ..serving import deploy, wait_served
        from ._endpoint import Endpoint

        endpoint_id, revision, _key = deploy(
            self.backend, _ref(model), entry=entry, entry_source=entry_source, name=name,
            host=host, port=port, cores=cores, memory=memory, replicas=replicas, auth=auth,
            namespace=namespace, target=target, min_replicas=min_replicas,
            max_replicas=max_replicas)
        if wait:
            wait_served(self.backend, endpoint_id, revision, timeout)
        return Endpoint(self, endpoint_id)

    def endpoints(self, all: bool = False) -> list[Endpoint]:
        """Endpoints, newest first: those starting or serving (``all=True``: every one,
        stopped and failed included)."""
        from ..store import ENDPOINT_ACTIVE
        from ._endpoint import Endpoint

        rows = [self.backend.endpoint_as_read(r) for r in self.backend.endpoints.list()]
        return [Endpoint(self, r["id"]) for r in rows
                if all or r["status"] in ENDPOINT_ACTIVE]

    def get_endpoint(self, ref: str) -> Endpoint:
        """An endpoint by id, by name (the newest of that name) or by a unique prefix."""
        from ._endpoint import Endpoint

        rows = self.backend.endpoints.find(ref)
        if not rows:
            raise NotFound(f"no endpoint matches {ref!r}; list them with: "
                           "jupyter mlops endpoints ls")
        if len(rows) > 1:
            names = ", ".join(f"{r['name']} ({r['id']})" for r in rows[:5])
            raise NotFound(f"{ref!r} matches {len(rows)} endpoints: {names}; give more of it")
        return Endpoint(self, rows[0]["id"])

    # -- compute --------------------------------------------------------------------------

    def targets(self) -> list[dict[str, Any]]:
        """Each target's slots and the run holding each (``%mlops targets``): the local
        slots, the local agent when one runs, and the Ray cluster's nodes and runs when a
        cluster is configured (``RAY_ADDRESS``, ``c.RayTarget.address``) or is the default
        target. Rows: ``target, slot, held, run_id`` and, for some, ``detail``."""
        from ..compute import describe_targets

        return describe_targets(self.backend)


# How many metric ids one events() call looks through: a follower far behind catches up in
# bounded steps instead of one scan of the whole metrics table.
_METRIC_WINDOW = 200_000
_FEED_CURSOR = re.compile(r"(\d{1,18})-(\d{1,18})")


def _decode_feed_cursor(cursor: str) -> tuple[int, int]:
    match = _FEED_CURSOR.fullmatch(str(cursor))
    if match is None:
        raise InvalidInput(f"not an events cursor: {str(cursor)[:40]!r}; start from the "
                           "cursor events() returns without one")
    return int(match[1]), int(match[2])


def _encode_run_cursor(key: tuple[float, str]) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_run_cursor(cursor: str) -> tuple[float, str]:
    try:
        text = str(cursor)
        created, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not (
                isinstance(run_id, str) and len(run_id) <= 64):
            raise ValueError
        return float(created), run_id
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("not a runs cursor: pass back the cursor a listing returned"
                           ) from None


def _ref(value: Any) -> Any:
    """A model or run given as an object becomes its reference string."""
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "ref", None) or getattr(value, "id", None) or value


def workspace(path: str | os.PathLike[str] | None = None, *,
              config: WorkspaceConfig | None = None,
              start: str | os.PathLike[str] | None = None) -> Workspace:
    """The current workspace (see DESIGN.md for how its location is found).

    ``config`` replaces the configuration files (the server extension passes its own);
    ``start`` is where the nearest ``.mlops`` is looked for (default: the current folder).
    The first time a process opens a workspace, the reaper looks once for runs whose job
    is gone (after a crash or a reboot) and records their ending; not in a job's kernel,
    whose job process reaps every few seconds anyway.
    """
    config = load_config() if config is None else config
    location = resolve_location(path, config, start=start)
    with _cache_lock:
        if location not in _cache:
            ws = Workspace(location, config)
            if not os.environ.get(ENV_RUN_ID):  # a job's kernel: its job process reaps
                from ..jobs import reap

                reap(ws.backend)
            _cache[location] = ws
        return _cache[location]
