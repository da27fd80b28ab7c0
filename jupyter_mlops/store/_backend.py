"""``Backend``: one workspace's database, artifact store, location and configuration.

This is what every service below the API facade receives (compute, jobs, registry, sweeps,
widgets): the store and nothing above it. The facade (``jupyter_mlops.api.Workspace``) holds
one and composes the services over it; job runners and sweep controllers, which have no
facade, open one directly with ``Backend.open()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._inputs import normalize_name
from ..errors import InvalidInput, NotFound
from ._artifacts import ArtifactStore
from ._config import WorkspaceConfig, WorkspaceLocation, load_config, resolve_location
from ._endpoint_store import ENDPOINT_ACTIVE, EndpointStore
from ._liveness import as_read
from ._store import ACTIVE, RunKey, Store


class Backend:
    """The database (``store``), the artifact store (``artifacts``), ``location``, ``config``."""

    def __init__(self, location: WorkspaceLocation, config: WorkspaceConfig | None = None):
        self.location = location
        self.config = config if config is not None else load_config()
        # The artifact store first: an unreachable one fails before the database is opened.
        self.artifacts = ArtifactStore(location.artifact_url, location.storage_options)
        self.artifacts.check()
        self.store = Store(location, self.config)
        self.endpoints = EndpointStore(self.store)

    @classmethod
    def open(cls, directory: str | os.PathLike[str] | None = None) -> Backend:
        """The workspace found as DESIGN.md says (environment, config, nearest ``.mlops``)."""
        config = load_config()
        return cls(resolve_location(directory, config), config)

    def __repr__(self) -> str:
        return f"<Backend {self.location.directory}>"

    # -- runs as readers see them -----------------------------------------------------------

    def run_row(self, run_id: str) -> dict[str, Any]:
        """A run's row, with ``lost`` reported for a job whose heartbeat went stale."""
        row = self.store.get_run_row(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r} in {self.location.directory}")
        return self.as_read(row)

    def endpoint_row(self, endpoint_id: str) -> dict[str, Any]:
        """An endpoint's row, with ``lost`` reported for a server whose process is gone."""
        row = self.endpoints.get(endpoint_id)
        if row is None:
            raise NotFound(f"no endpoint with id {endpoint_id!r} in {self.location.directory}")
        return self.endpoint_as_read(row)

    def endpoint_as_read(self, row: dict[str, Any]) -> dict[str, Any]:
        return as_read(row, self.config.lost_after, active=ENDPOINT_ACTIVE,
                       reread=lambda: self.endpoints.get(row["id"]), now=self.store.clock())

    def as_read(self, row: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """``row`` with ``lost`` reported for a run whose job is gone (see ``_liveness``),
        judged at ``now`` (default: the store's clock, database time on PostgreSQL)."""
        return as_read(row, self.config.lost_after,
                       reread=lambda: self.store.get_run_row(row["id"]),
                       now=self.store.clock() if now is None else now)

    def list_runs(self, *, experiment: str | None = None, status: list[str] | None = None,
                  tags: dict[str, Any] | None = None, parent_id: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Runs as readers see them, newest first, each with its latest ``metrics``: two
        queries however many runs. ``status`` filters by the status readers see, so a run
        whose job is gone is found under ``lost``."""
        rows = self._stored_runs(experiment, status, tags, parent_id=parent_id, limit=limit,
                                 offset=offset)
        return self._as_listed(rows, status)

    def runs_page(self, *, experiment: str | None = None, status: list[str] | None = None,
                  tags: dict[str, Any] | None = None, text: str | None = None,
                  limit: int = 50, before: RunKey | None = None,
                  ) -> tuple[list[dict[str, Any]], RunKey | None]:
        """One keyset page of runs as readers see them, newest first, older than ``before``;
        and the key to pass as ``before`` for the next page (None: this was the last).

        A page may hold fewer than ``limit`` runs while more follow: ``status`` is judged as
        readers see it (``lost`` derived) after the page is read in SQL."""
        rows = self._stored_runs(experiment, status, tags, text=text, limit=limit,
                                 before=before)
        after = (rows[-1]["created_at"], rows[-1]["id"]) if len(rows) == limit else None
        return self._as_listed(rows, status), after

    def _stored_runs(self, experiment: str | None, status: list[str] | None,
                     tags: dict[str, Any] | None, **paging: Any) -> list[dict[str, Any]]:
        stored = list(status) if status else None
        if stored and "lost" in stored:
            stored = sorted({*stored, *ACTIVE})  # derived-lost runs are stored as active
        if experiment is not None:  # found as it was stored: NFC, without surrounding spaces
            experiment = normalize_name(str(experiment))
        return self.store.list_runs(experiment=experiment, status=stored, tags=tags, **paging)

    def _as_listed(self, rows: list[dict[str, Any]], status: list[str] | None
                   ) -> list[dict[str, Any]]:
        now = self.store.clock()
        rows = [self.as_read(row, now) for row in rows]
        if status:
            rows = [row for row in rows if row["status"] in status]
        metrics = self.store.latest_metrics_many([row["id"] for row in rows])
        for row in rows:
            row.pop("environment", None)
            row["metrics"] = metrics[row["id"]]
        return rows

    def find_run(self, ref: str) -> dict[str, Any]:
        """The run a reference means: an id, a name (the newest run of that name), or a
        unique prefix of either."""
        return self._find_one("run", self.store.find_runs, ref,
                              "list them with: jupyter mlops runs ls")

    def find_sweep(self, ref: str) -> dict[str, Any]:
        """A sweep by id, by name (the newest of that name) or by a unique prefix."""
        return self._find_one("sweep", self.store.find_sweeps, ref,
                              "list them with: ws.sweeps()")

    def _find_one(self, what: str, find: Any, ref: str, hint: str) -> dict[str, Any]:
        ref = normalize_name(str(ref))  # names are stored in this form (``check_name``)
        if not ref:
            raise InvalidInput(f"a {what} id or name is needed")
        matches = find(ref)
        if not matches:
            raise NotFound(f"no {what} matches {ref!r} in {self.location.directory} ({hint})")
        if len(matches) > 1:
            shown = ", ".join(f"{m['id']} ({m['name']})" for m in matches[:5])
            raise NotFound(f"{ref!r} matches {len(matches)} {what}s: {shown}; "
                           "give more of the id")
        return matches[0]

    # -- files ------------------------------------------------------------------------------

    def staging_dir(self, run_id: str) -> Path:
        """The run's local working folder on this host (job files, outputs before storing)."""
        return self.location.directory / "staging" / run_id

    def store_outputs(self, run_id: str, folder: Path) -> list[str]:
        """Move every file under ``folder`` into the run's artifacts (``outputs/...``)."""
        stored: list[str] = []
        if not folder.is_dir():
            return stored
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = "outputs/" + path.relative_to(folder).as_posix()
            size, digest = self.artifacts.put_file(run_id, rel, path)
            self.store.record_artifact(run_id, rel, size, digest)
            stored.append(rel)
        return stored
