"""The model registry: named, versioned, immutable sets of files that know their run.

``backend.models.register("mnist", "outputs/model", run=run)`` (or ``run.register_model(...)``)
copies the files into the artifact store, hashes them on the way, and records version N+1.
Versions never change afterwards: tags and aliases ("production", "staging") are labels on
them, and deleting one is explicit and refused while an endpoint serves it.
"""

from __future__ import annotations

import html
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._inputs import check_destination
from ..errors import Conflict, InvalidInput, NotFound
from ..store import RegistryStore, clean_relpath
from ._files import (
    Blobs,
    Source,
    SourceFile,
    check_alias,
    check_name,
    check_tags,
    human_bytes,
    is_url,
    local_source,
    manifest_hash,
    parse_ref,
    url_source,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..store import Backend
    from ._lineage import Lineage

__all__ = ["Model", "ModelRegistry", "endpoints_serving"]


def endpoints_serving(backend: Backend, name: str, version: int) -> list[str]:
    """Names of the endpoints that currently serve model ``name`` version ``version``.

    The hook that keeps ``delete`` from pulling files from under a live endpoint: every
    endpoint starting or ready with this version (one whose server is gone does not count).
    """
    rows = [backend.endpoint_as_read(row) for row in backend.endpoints.serving(name, version)]
    return sorted(row["name"] for row in rows if row["status"] in ("starting", "ready"))


class Model:
    """One registered version of a model. Content fields are fixed; tags and aliases are
    read from the store on each access (another process may change them)."""

    def __init__(self, backend: Backend, row: dict[str, Any]):
        self.backend = backend
        self._row = row
        self.id: int = row["id"]
        self.name: str = row["name"]
        self.version: int = row["version"]
        self.sha256: str = row["sha256"]
        self.size: int = row["size"]
        self.file_count: int = row["file_count"]
        self.kind: str = row["kind"]  # "file" or "folder"
        self.root_name: str = row["root_name"]
        self.run_id: str | None = row["run_id"]
        self.source: str = row["source"]
        self.description: str | None = row["description"]
        self.created_at: float = row["created_at"]

    @property
    def ref(self) -> str:
        """``"name:version"``, the way to name this version anywhere."""
        return f"{self.name}:{self.version}"

    @property
    def _registry(self) -> RegistryStore:
        return RegistryStore(self.backend.store)

    @property
    def tags(self) -> dict[str, str]:
        return self._registry.model_tags(self.id)

    @property
    def aliases(self) -> list[str]:
        return self._registry.model_aliases(self.id)

    def files(self) -> list[dict[str, Any]]:
        """The stored files: ``path`` (inside the model), ``size``, ``sha256``."""
        return [{"path": p, "size": s, "sha256": h}
                for p, s, h in self._registry.model_files(self.id)]

    # -- labels ---------------------------------------------------------------------------

    def set_tags(self, tags: dict[str, Any] | None = None, remove: list[str] | tuple[str, ...] = ()
                 ) -> dict[str, str]:
        """Add or change tags (and drop the keys in ``remove``); returns all tags."""
        return self._registry.update_model_tags(self.id, check_tags(tags), list(remove))

    def set_alias(self, alias: str) -> None:
        """Point ``alias`` ("production", "staging", ...) of this model at this version;
        the version that had it loses it."""
        self._registry.set_model_alias(self._row["model_id"], check_alias(alias), self.id)

    def remove_alias(self, alias: str) -> None:
        if alias not in self.aliases:
            raise NotFound(f"{self.ref} has no alias {alias!r} (it has: "
                           f"{', '.join(self.aliases) or 'none'})")
        self._registry.remove_model_alias(self._row["model_id"], alias)

    # -- files ----------------------------------------------------------------------------

    def download(self, dest: str | os.PathLike[str] = ".", overwrite: bool = False) -> Path:
        """Copy the model's files to ``dest`` and return the path of the copy.

        Like ``cp -r``: when ``dest`` is an existing folder (or ends with ``/``) the model
        lands inside it under its own name (``dest/model.pkl``, ``dest/model/``); otherwise
        it becomes ``dest``. Every file's hash is checked, and the copy appears only once
        complete. An existing target is kept unless ``overwrite``.
        """
        into = str(dest).endswith(("/", os.sep))
        dest = Path(dest).expanduser()
        target = check_destination(dest / self.root_name if into or dest.is_dir() else dest)
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise InvalidInput(
                f"{target} already exists; choose another destination or pass "
                "overwrite=True (CLI: --force)"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # permissions, a file appearing meanwhile...: one clear line
            raise InvalidInput(f"cannot download to {target}: cannot create "
                               f"{exc.filename or target.parent}: {exc.strerror}") from None
        blobs = Blobs(self.backend, "models")
        files = self._registry.model_files(self.id)
        if not target.exists():
            blobs.download(self._row["storage"], files, target, self.kind)
            return target
        # Overwrite: build the new copy beside the old one, then swap them.
        fresh = target.with_name(f".{target.name}.new-{uuid.uuid4().hex[:8]}")
        blobs.download(self._row["storage"], files, fresh, self.kind)
        if fresh.is_dir() or target.is_dir():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            fresh.rename(target)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(fresh, target)
        return target

    def local_path(self) -> Path | None:
        """Where the files are stored, when the artifact store is a local folder (read
        them, never change them); None for remote stores — use ``download``."""
        blobs = Blobs(self.backend, "models")
        if not blobs.is_local:
            return None
        path = Path(blobs.full(self._row["storage"]))
        return path / self.root_name if self.kind == "file" else path

    def delete(self) -> None:
        """Delete this version (refused while an endpoint serves it). Its number is not
        reused."""
        ModelRegistry(self.backend).delete(self.name, self.version)

    def lineage(self) -> Lineage:
        from ._lineage import lineage

        return lineage(self.backend, model=self.ref)

    # -- display --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Everything stored about this version, as one dict."""
        row = {k: v for k, v in self._row.items() if k not in ("model_id", "storage")}
        row.update(tags=self.tags, aliases=self.aliases, ref=self.ref)
        return row

    def __repr__(self) -> str:
        return (f"<Model {self.ref} sha256={self.sha256[:12]} {self.file_count} "
                f"file{'s' if self.file_count != 1 else ''} {human_bytes(self.size)}>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("model", self.id))

    def _repr_html_(self) -> str:
        tags = ", ".join(f"{k}={v}" for k, v in self.tags.items())
        aliases = "".join(
            f' <span style="background:#1565c0;color:white;padding:0 5px;border-radius:3px">'
            f"{html.escape(a)}</span>" for a in self.aliases)
        rows = [
            ("files", f"{self.file_count} ({human_bytes(self.size)})"),
            ("sha256", f"<code>{self.sha256[:16]}…</code>"),
            ("run", f"<code>{self.run_id}</code>" if self.run_id else "—"),
            ("source", html.escape(self.source)),
            ("tags", html.escape(tags) or "—"),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))),
        ]
        if self.description:
            rows.insert(0, ("description", html.escape(self.description)))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>"
                       f"{v}</td></tr>" for k, v in rows)
        return (f"<div><b>Model {html.escape(self.ref)}</b>{aliases}"
                f"<table>{body}</table></div>")


class ModelRegistry:
    """``ws.models``: register, list, get, label and delete model versions."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._store = RegistryStore(backend.store)
        self._blobs = Blobs(backend, "models")

    def _version(self, row: dict[str, Any]) -> Model:
        """The object a version row is handed out as (the API facade links it to runs)."""
        return Model(self.backend, row)

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        run: Any = None,
        tags: dict[str, Any] | None = None,
        description: str | None = None,
        reuse: bool = False,
    ) -> Model:
        """Register a file or folder as the next version of model ``name``.

        Parameters
        ----------
        name
            Letters, digits, ``.``, ``-``, ``_`` (it becomes part of storage paths).
        path
            With ``run``: an artifact path of that run (``"outputs/model.pkl"``, or
            ``"model.pkl"`` for the same file; a folder takes every file under it).
            Without: a local file or folder, or an fsspec URL.
        run
            The run (or its id) that produced the model: the version's lineage.
        reuse
            When a version with exactly this content exists, return it instead of
            adding a new one.

        Files are copied (hashed on the way) before the version is recorded, in one
        transaction that allocates the number: concurrent registrations get consecutive
        numbers, and an interrupted one leaves no version behind.
        """
        name = check_name(name)
        tags = check_tags(tags)
        if description is not None and not isinstance(description, str):
            raise InvalidInput("description must be a string")
        run_id = None
        if run is not None:
            run_id = self.backend.find_run(run if isinstance(run, str) else run.id)["id"]
            source = run_source(self.backend, run_id, str(path))
        elif isinstance(path, str) and is_url(path) and not path.startswith("file://"):
            source = url_source(path, "model")
        else:
            raw = str(path)[len("file://"):] if str(path).startswith("file://") else path
            source = local_source(raw, "model")
        storage = self._blobs.new_storage(name)
        files = self._blobs.write(storage, source)
        fields = {
            "sha256": manifest_hash(source.kind, files),
            "size": sum(s for _, s, _ in files),
            "file_count": len(files),
            "kind": source.kind,
            "root_name": source.root_name,
            "storage": storage,
            "run_id": run_id,
            "source": source.uri,
            "description": description,
            "tags": tags,
        }
        try:
            row, created = self._store.add_model_version(name, fields, files, reuse=reuse)
        except BaseException:
            self._blobs.remove(storage)
            raise
        if not created:
            self._blobs.remove(storage)
        return self._version(row)

    def list(
        self,
        name: str | None = None,
        tags: dict[str, Any] | None = None,
        alias: str | None = None,
    ) -> list[Model]:
        """Versions (by name, newest first), filtered by name, tags (all must match) and
        alias."""
        if name is not None:
            check_name(name)
        wanted = check_tags(tags)
        found = []
        for row in self._store.model_versions(name=name):
            if any(row["tags"].get(k) != v for k, v in wanted.items()):
                continue
            if alias is not None and alias not in row["aliases"]:
                continue
            found.append(self._version(row))
        return found

    def names(self) -> list[str]:
        return self._store.model_names()

    def get(self, name: str, version: int | str | None = None) -> Model:
        """Version ``version`` (a number, ``"latest"`` — the default — or an alias) of
        model ``name``; ``name`` may also be ``"name:version"``."""
        name, ref = parse_ref(name, version, "model")
        row = self._store.model_version(name, ref)
        if row is None:
            raise NotFound(self._missing(name, ref))
        return self._version(row)

    def _missing(self, name: str, ref: int | str) -> str:
        versions = self._store.model_versions(name=name)
        if not versions:
            known = self._store.model_names()
            shown = ", ".join(known[:10]) or "none yet"
            return (f"no model named {name!r} in {self.backend.location.directory} "
                    f"(models: {shown})")
        numbers = ", ".join(str(r["version"]) for r in reversed(versions))
        if isinstance(ref, int):
            return f"model {name!r} has no version {ref} (versions: {numbers})"
        aliases = sorted({a for r in versions for a in r["aliases"]})
        return (f"model {name!r} has no version with alias {ref!r} "
                f"(aliases: {', '.join(aliases) or 'none'}; versions: {numbers})")

    def set_tags(self, name: str, version: int | str | None = None,
                 tags: dict[str, Any] | None = None, remove: list[str] | tuple[str, ...] = ()
                 ) -> dict[str, str]:
        return self.get(name, version).set_tags(tags, remove)

    def set_alias(self, name: str, version: int | str | None, alias: str) -> Model:
        model = self.get(name, version)
        model.set_alias(alias)
        return model

    def delete(self, name: str, version: int | str | None = None) -> None:
        """Delete one version, named explicitly by number (never "latest" or an alias).

        Refused while an endpoint serves it. The rows go first (the version stops existing
        for every reader at once), then the files.
        """
        name, ref = parse_ref(name, version, "model")
        if not isinstance(ref, int):
            raise InvalidInput(
                f"deleting needs an explicit version number (e.g. {name}:3), not {ref!r}"
            )
        model = self.get(name, ref)
        serving = endpoints_serving(self.backend, name, ref)
        if serving:
            raise Conflict(
                f"model {model.ref} is served by endpoint{'s' if len(serving) > 1 else ''} "
                f"{', '.join(serving)}; delete or redeploy {'them' if len(serving) > 1 else 'it'}"
                " first"
            )
        if self._store.delete_model_version(model.id):
            self._blobs.remove(model._row["storage"])

    def gc(self, older_than: float = 3600.0) -> list[str]:
        """Remove stored folders no version references (left by interrupted registrations
        or deletes) untouched for ``older_than`` seconds; returns what was removed."""
        removed = self._blobs.orphans(self._store.model_storages(), older_than)
        for storage in removed:
            self._blobs.remove(storage)
        return removed

    def dataframe(self, name: str | None = None, tags: dict[str, Any] | None = None
                  ) -> pd.DataFrame:
        """One row per version: name, version, aliases, tags, files, size, run, created."""
        import pandas as pd

        records = [{
            "name": m.name, "version": m.version,
            "aliases": ", ".join(m._row["aliases"]),
            "tags": ", ".join(f"{k}={v}" for k, v in m._row["tags"].items()),
            "files": m.file_count, "size": human_bytes(m.size), "run": m.run_id or "",
            "created": pd.to_datetime(m.created_at, unit="s"), "sha256": m.sha256[:12],
        } for m in self.list(name=name, tags=tags)]
        columns = ["name", "version", "aliases", "tags", "files", "size", "run", "created",
                   "sha256"]
        return pd.DataFrame.from_records(records, columns=columns)

    def __repr__(self) -> str:
        return f"<ModelRegistry of {self.backend.location.directory}>"

    def _repr_html_(self) -> str:
        frame = self.dataframe()
        return frame.to_html(index=False) if len(frame) else "<i>no models registered yet</i>"


def run_source(backend: Backend, run_id: str, path: str) -> Source:
    """A run's artifact (file or folder) as a registration source.

    ``model.pkl`` finds ``outputs/model.pkl`` too. While the run is still going its outputs
    are not artifacts yet: they are then taken from the run's local outputs folder, so
    ``run.register_model(...)`` works inside a ``start_run`` block or a job.
    """
    rel = clean_relpath(path)
    artifacts = {a["path"]: a for a in backend.store.artifacts(run_id)}
    candidates = [rel] if rel.startswith("outputs/") else [rel, f"outputs/{rel}"]

    def artifact(relpath: str, name: str) -> SourceFile:
        local = backend.artifacts._path(run_id, relpath) if backend.artifacts.is_local else None
        return SourceFile(name, artifacts[relpath]["size"],
                          lambda: backend.artifacts.open(run_id, relpath), local)

    for cand in candidates:
        if cand in artifacts:
            base = cand.rsplit("/", 1)[-1]
            return Source("file", base, f"run:{run_id}/{cand}", [artifact(cand, base)])
        inside = sorted(p for p in artifacts if p.startswith(cand + "/"))
        if inside:
            files = [artifact(p, p[len(cand) + 1:]) for p in inside]
            return Source("folder", cand.rsplit("/", 1)[-1], f"run:{run_id}/{cand}", files)
    outputs = backend.location.directory / "staging" / run_id / "outputs"
    local = outputs / rel.removeprefix("outputs/") if rel != "outputs" else outputs
    if local.exists():
        source = local_source(local, "model")
        source.uri = f"run:{run_id}/outputs/{rel.removeprefix('outputs/')}".rstrip("/")
        return source
    shown = ", ".join(sorted(artifacts)[:12]) or "none"
    raise NotFound(f"run {run_id} has no artifact {path!r} (nor outputs/{rel}); its "
                   f"artifacts: {shown}")
