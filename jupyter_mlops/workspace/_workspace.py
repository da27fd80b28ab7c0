"""``Workspace``: the entry point to everything stored — runs, metrics, artifacts."""

from __future__ import annotations

import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ._artifacts import ArtifactStore
from ._config import WorkspaceConfig, WorkspaceLocation, resolve_location
from ._run import Run
from ._store import ALL_STATUSES, Store

if TYPE_CHECKING:
    import pandas as pd

    from ..registry import DatasetRegistry, Lineage, ModelRegistry, RunDiff

_cache: dict[WorkspaceLocation, Workspace] = {}
_cache_lock = threading.Lock()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Workspace:
    """A database plus an artifact store. Get one with ``jupyter_mlops.workspace()``."""

    def __init__(self, location: WorkspaceLocation, config: WorkspaceConfig | None = None):
        self.location = location
        self.config = config or WorkspaceConfig()
        self.store = Store(location, self.config)
        self.artifacts = ArtifactStore(location.artifact_url)

    def __repr__(self) -> str:
        return f"<Workspace {self.location.directory}>"

    # -- reading --------------------------------------------------------------------------

    def get_run(self, ref: str) -> Run:
        """A run by id, by name (the newest run of that name), or by a unique prefix of
        its id or name."""
        ref = str(ref).strip()
        if not ref:
            raise InvalidInput("a run id or name is needed")
        matches = self.store.find_runs(ref)
        if not matches:
            raise NotFound(
                f"no run matches {ref!r} in {self.location.directory} "
                "(list them with: jupyter mlops runs ls)"
            )
        if len(matches) > 1:
            shown = ", ".join(f"{m['id']} ({m['name']})" for m in matches[:5])
            raise NotFound(f"{ref!r} matches {len(matches)} runs: {shown}; give more of the id")
        return Run(self, matches[0]["id"])

    def runs(
        self,
        experiment: str | None = None,
        status: str | list[str] | None = None,
        tags: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, filtered by experiment, status and tags."""
        for s in [status] if isinstance(status, str) else status or []:
            if s not in ALL_STATUSES:
                raise InvalidInput(f"unknown status {s!r}; use one of {', '.join(ALL_STATUSES)}")
        rows = self.store.list_runs(experiment=experiment, status=status, tags=tags, limit=limit)
        runs = [Run(self, r["id"]) for r in rows]
        for run, row in zip(runs, rows):
            if row["status"] in ("starting", "running"):
                run._check_lost(row)
        return runs

    def runs_dataframe(
        self,
        experiment: str | None = None,
        status: str | list[str] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """One row per run: id, name, experiment, status, times, ``param.*`` and
        ``metric.*`` columns (latest values) — ready to sort and compare."""
        import pandas as pd

        records = []
        for run in self.runs(experiment=experiment, status=status, tags=tags):
            row = run.info()
            record = {
                "id": row["id"],
                "name": row["name"],
                "experiment": row["experiment"],
                "status": row["status"],
                "created": pd.to_datetime(row["created_at"], unit="s"),
                "duration_s": (row["ended_at"] - row["started_at"])
                if row["ended_at"] and row["started_at"]
                else None,
            }
            record.update({f"param.{k}": v for k, v in row["params"].items()})
            record.update({f"tag.{k}": v for k, v in row["tags"].items()})
            record.update({f"metric.{k}": v for k, v in run.metrics().items()})
            records.append(record)
        return pd.DataFrame.from_records(records)

    def experiments(self) -> list[dict[str, Any]]:
        return self.store.experiments()

    # -- registry: models, datasets, lineage ------------------------------------------------

    @property
    def models(self) -> ModelRegistry:
        """The model registry: ``ws.models.register/list/get``."""
        from ..registry import ModelRegistry

        return ModelRegistry(self)

    @property
    def datasets(self) -> DatasetRegistry:
        """Versioned datasets: ``ws.datasets.register/list/get``."""
        from ..registry import DatasetRegistry

        return DatasetRegistry(self)

    def lineage(self, model: Any = None, run: Any = None) -> Lineage:
        """What made a model version (``model="mnist:3"``) or a run: run, code snapshot,
        params, environment, dataset versions, parent sweep."""
        from ..registry import lineage

        return lineage(self, model=model, run=run)

    def diff_runs(self, run_a: Any, run_b: Any) -> RunDiff:
        """Differences between two runs in params, metrics, environment, packages,
        datasets and code."""
        from ..registry import diff_runs

        return diff_runs(self, run_a, run_b)

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
        target: str = "local",
        gpus: int = 0,
        retry_failed: int = 0,
        seed: int | None = None,
        timeout: float | None = None,
        name: str | None = None,
        experiment: str = "Default",
    ) -> Any:
        """Start a hyperparameter sweep; returns a ``Sweep`` at once (its controller runs
        detached). The code is a notebook path, a notebook node, a cell's source (names it
        reads are carried from ``namespace``), or the code of an earlier run (``from_run``)."""
        from ..sweeps import SweepSpec, create_sweep
        from ..sweeps._sources import sweep_source

        notebook, carried, source, cwd = sweep_source(
            self, code_or_notebook, from_run=from_run, namespace=namespace,
            swept=list(params if isinstance(params, dict) else
                       [p.partition("=")[0].strip() for p in params]),
            fixed=fixed or {})
        space = params if isinstance(params, dict) else dict(
            (p.partition("=")[0].strip(), p.partition("=")[2].strip()) for p in params)
        spec = SweepSpec(space=space, metric=metric, goal=goal, sampler=sampler, trials=trials,
                         concurrency=concurrency, policy=policy, target=target, gpus=gpus,
                         retry_failed=retry_failed, seed=seed, timeout=timeout,
                         parameters=dict(fixed or {}), source=source, cwd=cwd)
        try:
            return create_sweep(self, notebook, spec, name=name, experiment=experiment,
                                carried_from=carried)
        finally:
            if carried is not None and source.startswith("cell"):
                import shutil

                shutil.rmtree(carried.parent, ignore_errors=True)

    def get_sweep(self, ref: str) -> Any:
        """A sweep by id, by name (the newest of that name) or by a unique prefix."""
        from ..sweeps import Sweep

        matches = self.store.find_sweeps(str(ref).strip())
        if not matches:
            raise NotFound(f"no sweep matches {ref!r} in {self.location.directory}")
        if len(matches) > 1:
            shown = ", ".join(f"{m['id']} ({m['name']})" for m in matches[:5])
            raise NotFound(f"{ref!r} matches {len(matches)} sweeps: {shown}")
        return Sweep(self, matches[0]["id"])

    def sweeps(self, experiment: str | None = None) -> list[Any]:
        from ..sweeps import Sweep

        return [Sweep(self, r["id"]) for r in self.store.list_sweeps(experiment=experiment)]


def workspace(path: str | os.PathLike[str] | None = None) -> Workspace:
    """The current workspace (see DESIGN.md for how its location is found)."""
    location = resolve_location(path)
    with _cache_lock:
        if location not in _cache:
            _cache[location] = Workspace(location)
        return _cache[location]
