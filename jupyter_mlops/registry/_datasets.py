"""Versioned datasets: references to data (or snapshots of it) with a content hash.

``backend.datasets.register("pets", "/data/pets.csv")`` hashes the data where it is and records
version N+1 only when the content (or its location) changed since the newest version; the
data stays where it is unless ``copy=True`` snapshots it into the artifact store. Each
version carries a small profile (files, bytes; rows, columns, dtypes and simple statistics
of CSV/Parquet tables).

A run names its inputs with ``%%train --dataset pets:2``: the version is pinned when the run
is submitted, resolved to a local path when its job starts (``mlops.dataset("pets")`` in the
job), and recorded as an input of the run — the link lineage follows.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, InvalidInput, NotFound, WorkspaceError
from ..store import RegistryStore
from ._files import (
    CHUNK,
    Blobs,
    Source,
    SourceFile,
    check_name,
    check_tags,
    hash_files,
    human_bytes,
    is_url,
    local_source,
    manifest_hash,
    opener,
    parse_ref,
    pump,
    url_source,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..store import Backend

__all__ = ["ENV_DATASETS", "Dataset", "DatasetRegistry", "job_datasets_env", "pin_datasets"]

# JSON {"pets": {"path": "/abs/path", "version": 2, "sha256": "..."}} set for a job's kernel.
ENV_DATASETS = "JUPYTER_MLOPS_DATASETS"


class Dataset:
    """One version of a dataset."""

    def __init__(self, backend: Backend, row: dict[str, Any]):
        self.backend = backend
        self._row = row
        self.id: int = row["id"]
        self.name: str = row["name"]
        self.version: int = row["version"]
        self.uri: str = row["uri"]  # where the data was when it was registered
        self.sha256: str = row["sha256"]
        self.size: int = row["size"]
        self.file_count: int = row["file_count"]
        self.kind: str = row["kind"]  # "file" | "folder"
        self.profile: dict[str, Any] = row["profile"]
        self.description: str | None = row["description"]
        self.created_at: float = row["created_at"]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def copied(self) -> bool:
        """True when the version is a snapshot in the artifact store (``copy=True``)."""
        return self._row["storage"] is not None

    @property
    def tags(self) -> dict[str, str]:
        row = RegistryStore(self.backend.store).dataset_version(self.name, self.version)
        return dict(row["tags"]) if row else {}

    def set_tags(self, tags: dict[str, Any]) -> dict[str, str]:
        return RegistryStore(self.backend.store).update_dataset_tags(self.id, check_tags(tags))

    @property
    def path(self) -> Path:
        """A local path to the data of this version (a file or a folder).

        A snapshot in a local artifact store, or a reference to a local path, is used in
        place (read it, don't change it). Remote data is downloaded once into the
        workspace's cache, its hash checked against the recorded one.
        """
        blobs = Blobs(self.backend, "datasets")
        storage = self._row["storage"]
        if storage is not None:
            if blobs.is_local:
                base = Path(blobs.full(storage))
                path = base / self._root_name() if self.kind == "file" else base
                if not path.exists():
                    raise WorkspaceError(
                        f"the snapshot of dataset {self.ref} is missing from the artifact "
                        f"store ({path}): it was removed outside jupyter-mlops"
                    )
                return path
            return self._cached(_storage_source(blobs, storage, self.kind))
        if is_url(self.uri) and not self.uri.startswith("file://"):
            try:
                source = url_source(self.uri, "dataset")
            except NotFound:
                raise NotFound(self._vanished()) from None
            return self._cached(source)
        path = Path(self.uri.removeprefix("file://"))
        if not path.exists():
            raise NotFound(self._vanished())
        if (self.kind == "file") != path.is_file():
            raise NotFound(f"dataset {self.ref} was registered as a {self.kind} at {self.uri}, "
                           f"which is now a {'file' if path.is_file() else 'folder'}; "
                           f"register the data again to record a new version")
        # A reference may have been edited in place: when its files, size or newest mtime
        # moved since registration, hash it again; only a different hash is refused.
        recorded = self._row.get("fingerprint")
        if recorded:
            current = local_source(path, "dataset")
            if current.fingerprint != recorded:
                self._check_hash(current)
        return path

    def _check_hash(self, source: Source) -> None:
        sha = manifest_hash(self.kind, hash_files(source))
        if sha != self.sha256:
            raise Conflict(
                f"dataset {self.ref} at {self.uri} changed since it was registered (content "
                f"hash {sha[:12]}…, recorded {self.sha256[:12]}…); register it again to "
                "record the new content as a new version"
            )

    def _root_name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1] or "data"

    def _vanished(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created_at))
        return (f"dataset {self.ref} (registered {when}) refers to {self.uri}, which no longer "
                f"exists; put the data back there, or register its new location with "
                f"backend.datasets.register({self.name!r}, NEW_PATH)")

    def _cached(self, source: Source) -> Path:
        """Download ``source`` into the cache (verifying the hash) unless already there."""
        folder = (self.backend.location.directory / "cache" / "datasets" / self.name
                  / f"{self.version}-{self.sha256[:16]}")
        path = folder / source.root_name if self.kind == "file" else folder
        if folder.is_dir():
            return path
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            buffer, got = bytearray(CHUNK), []
            for item in source.files:
                target = tmp / item.relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                with item.open() as src, open(target, "wb") as out:
                    got.append((item.relpath, *pump(src, out, buffer)))
            sha = manifest_hash(self.kind, got)
            if sha != self.sha256:
                raise Conflict(
                    f"dataset {self.ref} at {self.uri} changed since it was registered "
                    f"(content hash {sha[:12]}…, recorded {self.sha256[:12]}…); register it "
                    "again to record the new content as a new version"
                )
            try:
                tmp.rename(folder)
            except OSError:  # another process cached it first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def verify(self) -> None:
        """Re-hash the data at its recorded location; raise ``Conflict`` if it changed."""
        blobs = Blobs(self.backend, "datasets")
        if self._row["storage"] is not None:
            source = _storage_source(blobs, self._row["storage"], self.kind)
        elif is_url(self.uri) and not self.uri.startswith("file://"):
            source = url_source(self.uri, "dataset")
        else:
            if not Path(self.uri.removeprefix("file://")).exists():
                raise NotFound(self._vanished())
            source = local_source(self.uri.removeprefix("file://"), "dataset")
        self._check_hash(source)

    def run_ids(self) -> list[str]:
        """Ids of the runs that read this version (``runs()`` on the facade's datasets)."""
        return list(RegistryStore(self.backend.store).runs_reading(self.id))

    def to_pandas(self, **read_options: Any) -> pd.DataFrame:
        """Read a one-table dataset (CSV/TSV/Parquet file) into a DataFrame."""
        import pandas as pd

        from ._profile import table_format

        path = self.path
        fmt = table_format(path.name) if path.is_file() else None
        if fmt == "parquet":
            return pd.read_parquet(path, **read_options)
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, **({"sep": "\t"} if fmt == "tsv" else {}), **read_options)
        raise InvalidInput(f"dataset {self.ref} is not a single CSV/TSV/Parquet file; "
                           f"read the files under {path} yourself")

    def info(self) -> dict[str, Any]:
        row = {k: v for k, v in self._row.items() if k not in ("dataset_id",)}
        row.update(copied=self.copied, ref=self.ref, tags=self.tags)
        return row

    def __repr__(self) -> str:
        where = "snapshot" if self.copied else self.uri
        return (f"<Dataset {self.ref} sha256={self.sha256[:12]} {self.file_count} "
                f"file{'s' if self.file_count != 1 else ''} {human_bytes(self.size)} {where}>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("dataset", self.id))

    def _repr_html_(self) -> str:
        head = (f"<b>Dataset {html.escape(self.ref)}</b> — {self.file_count} file(s), "
                f"{human_bytes(self.size)}, {'snapshot of ' if self.copied else ''}"
                f"<code>{html.escape(self.uri)}</code>")
        parts = [head]
        for relpath, table in (self.profile.get("tables") or {}).items():
            if "schema" not in table:
                parts.append(f"<div><code>{html.escape(relpath)}</code>: "
                             f"{html.escape(table.get('error') or table.get('note') or '')}</div>")
                continue
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c.get(k, '')))}</td>"
                                 for k in ("name", "dtype", "nulls", "min", "max", "mean"))
                + "</tr>" for c in table["schema"])
            parts.append(
                f"<div><code>{html.escape(relpath)}</code> ({table['format']}): "
                f"{table['rows']} rows x {table['columns']} columns</div>"
                "<table><tr><th>column</th><th>dtype</th><th>nulls</th><th>min</th>"
                f"<th>max</th><th>mean</th></tr>{rows}</table>")
        return "<div>" + "".join(parts) + "</div>"


def _storage_source(blobs: Blobs, storage: str, kind: str) -> Source:
    """The files of a snapshot in the artifact store, as a source to read them from."""
    base = blobs.full(storage)
    files = []
    for path, info in sorted(blobs.fs.find(base, detail=True).items()):
        rel = path[len(base.rstrip("/")) + 1:]
        files.append(SourceFile(rel, int(info.get("size") or 0),
                                lambda path=path: blobs.fs.open(path, "rb")))
    if not files:
        raise WorkspaceError(f"the snapshot {base} is missing from the artifact store")
    return Source(kind, files[0].relpath if kind == "file" else storage.rsplit("/", 1)[-1],
                  base, files)


class DatasetRegistry:
    """``ws.datasets``: register, list and get dataset versions."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._store = RegistryStore(backend.store)
        self._blobs = Blobs(backend, "datasets")

    def _version(self, row: dict[str, Any]) -> Dataset:
        """The object a version row is handed out as (the API facade links it to runs)."""
        return Dataset(self.backend, row)

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        description: str | None = None,
        tags: dict[str, Any] | None = None,
        *,
        copy: bool = False,
        profile: bool = True,
    ) -> Dataset:
        """Record a new version of dataset ``name`` when its content changed, else return
        the newest version.

        Parameters
        ----------
        path
            A local file or folder, or an fsspec URL (``s3://bucket/pets/``).
        copy
            Snapshot the files into the artifact store (the version then survives changes
            to the original); by default only the location and content hash are kept.
        profile
            Profile CSV/Parquet tables (rows, columns, dtypes, simple stats).

        The content hash covers every file (sha256, streamed). A new version is also made
        when the same content is registered from another location, or with ``copy``
        changed: a version records where its data is.
        """
        name = check_name(name, "dataset")
        tags = check_tags(tags)
        if description is not None and not isinstance(description, str):
            raise InvalidInput("description must be a string")
        text = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"a dataset path must be a non-empty path or URL, got {path!r}")
        if is_url(text) and not text.startswith("file://"):
            source = url_source(text, "dataset")
        else:
            source = local_source(text.removeprefix("file://"), "dataset")
        storage = None
        if copy:
            storage = self._blobs.new_storage(name)
            files = self._blobs.write(storage, source)
        else:
            files = hash_files(source)
        try:
            sha = manifest_hash(source.kind, files)
            latest = self._store.dataset_version(name, "latest")
            if latest is not None and (latest["sha256"], latest["uri"],
                                       latest["storage"] is not None) == (sha, source.uri, copy):
                if storage:
                    self._blobs.remove(storage)
                return self._version(latest)
            prof = _profile(self._blobs, storage, source) if profile else {
                "files": len(files), "bytes": sum(s for _, s, _ in files), "tables": {}}
            fields = {
                "uri": source.uri, "storage": storage, "sha256": sha,
                "fingerprint": None if copy else source.fingerprint,
                "size": sum(s for _, s, _ in files), "file_count": len(files),
                "kind": source.kind, "profile": prof, "description": description,
                "tags": tags,
            }
            row, created = self._store.add_dataset_version(name, fields)
        except BaseException:
            if storage:
                self._blobs.remove(storage)
            raise
        if not created and storage:
            self._blobs.remove(storage)
        return self._version(row)

    def list(self, name: str | None = None, tags: dict[str, Any] | None = None
             ) -> list[Dataset]:
        """Versions (by name, newest first), filtered by name and tags."""
        if name is not None:
            check_name(name, "dataset")
        wanted = check_tags(tags)
        return [self._version(r) for r in self._store.dataset_versions(name=name)
                if all(r["tags"].get(k) == v for k, v in wanted.items())]

    def names(self) -> list[str]:
        return self._store.dataset_names()

    def get(self, name: str, version: int | str | None = None) -> Dataset:
        """Version ``version`` (a number, or ``"latest"``, the default) of dataset
        ``name``; ``name`` may also be ``"name:version"``. Its ``.path`` is the data."""
        name, ref = parse_ref(name, version, "dataset")
        row = self._store.dataset_version(name, ref)
        if row is None:
            versions = self._store.dataset_versions(name=name)
            if not versions:
                known = ", ".join(self._store.dataset_names()[:10]) or "none yet"
                raise NotFound(f"no dataset named {name!r} in "
                               f"{self.backend.location.directory} (datasets: {known})")
            numbers = ", ".join(str(r["version"]) for r in reversed(versions))
            raise NotFound(f"dataset {name!r} has no version {ref} (versions: {numbers})")
        return self._version(row)

    def record_input(self, run: Any, dataset: Dataset) -> None:
        """Record that ``run`` read ``dataset`` (lineage); done for you by ``--dataset``
        and by ``mlops.dataset()`` inside a run."""
        run_id = run if isinstance(run, str) else run.id
        self._store.record_run_input(run_id, dataset.id)

    def inputs_of(self, run: Any) -> list[Dataset]:
        """The dataset versions a run (or run id) read."""
        run_id = run if isinstance(run, str) else run.id
        return [self._version(r) for r in self._store.run_inputs(run_id)]

    def gc(self, older_than: float = 3600.0) -> list[str]:
        """Remove snapshot folders no version references (interrupted ``copy=True``
        registrations) untouched for ``older_than`` seconds."""
        removed = self._blobs.orphans(self._store.dataset_storages(), older_than)
        for storage in removed:
            self._blobs.remove(storage)
        return removed

    def dataframe(self, name: str | None = None) -> pd.DataFrame:
        import pandas as pd

        records = []
        for d in self.list(name=name):
            tables = d.profile.get("tables") or {}
            rows = sum(t.get("rows", 0) for t in tables.values())
            records.append({
                "name": d.name, "version": d.version, "files": d.file_count,
                "size": human_bytes(d.size), "rows": rows if tables else None,
                "copied": d.copied, "location": d.uri,
                "tags": ", ".join(f"{k}={v}" for k, v in d._row["tags"].items()),
                "created": pd.to_datetime(d.created_at, unit="s"), "sha256": d.sha256[:12],
            })
        columns = ["name", "version", "files", "size", "rows", "copied", "location", "tags",
                   "created", "sha256"]
        return pd.DataFrame.from_records(records, columns=columns)

    def __repr__(self) -> str:
        return f"<DatasetRegistry of {self.backend.location.directory}>"

    def _repr_html_(self) -> str:
        frame = self.dataframe()
        return frame.to_html(index=False) if len(frame) else "<i>no datasets registered yet</i>"


def _profile(blobs: Blobs, storage: str | None, source: Source) -> dict[str, Any]:
    from ._profile import profile

    if storage is not None and blobs.is_local:  # read the fresh local copy, not the origin
        base = blobs.full(storage)
        files = [(f.relpath, f.size, opener(os.path.join(base, f.relpath)))
                 for f in source.files]
    else:
        files = [(f.relpath, f.size, f.open) for f in source.files]
    return profile(files)


# -- datasets as run inputs ------------------------------------------------------------------


def pin_datasets(backend: Backend, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check that every ``{"name", "version"}`` exists and fix "latest" to its number now,
    at submission: the run then reads the version that was newest when it was asked for."""
    pinned, seen = [], set()
    registry = DatasetRegistry(backend)
    for spec in specs:
        found = registry.get(spec["name"], spec.get("version") or "latest")
        if found.name in seen:
            raise InvalidInput(f"dataset {found.name!r} is given twice")
        seen.add(found.name)
        pinned.append({"name": found.name, "version": found.version})
    return pinned


def job_datasets_env(backend: Backend, run_id: str) -> dict[str, str]:
    """For a job about to start: resolve the run's datasets to local paths, record them as
    the run's inputs, and return the environment that tells ``mlops.dataset`` where they
    are. Raises (naming the version and its location) when the data is gone."""
    row = backend.store.get_run_row(run_id) or {}
    specs = (row.get("resources") or {}).get("datasets") or []
    if not specs:
        return {}
    registry = DatasetRegistry(backend)
    resolved: dict[str, dict[str, Any]] = {}
    for spec in specs:
        found = registry.get(spec["name"], spec.get("version") or "latest")
        resolved[found.name] = {"path": str(found.path), "version": found.version,
                                "sha256": found.sha256}
        registry.record_input(run_id, found)
    backend.store.merge_run_json(run_id, "resources", {"datasets": [
        {"name": n, "version": d["version"]} for n, d in resolved.items()]})
    return {ENV_DATASETS: json.dumps(resolved)}
