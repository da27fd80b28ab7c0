"""Artifact files under an fsspec root (a local folder by default, object storage by URL).

Every write goes to a temporary name first and is then renamed (or, on object stores,
committed by the single PUT), so a reader never sees half a file and a job killed mid-copy
leaves at most a ``.tmp-*`` file nobody references.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import BinaryIO

import fsspec

from ..errors import InvalidInput, NotFound

CHUNK = 1 << 20


def clean_relpath(path: str) -> str:
    """A relative artifact path with ``/`` separators; refuses absolute paths and ``..``."""
    raw = str(path).replace(os.sep, "/") if path else ""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or raw.startswith("/"):
        raise InvalidInput(
            f"artifact path {path!r} must be relative and stay inside the run "
            "(no leading '/', no '..')"
        )
    return "/".join(parts)


class ArtifactStore:
    """Files of runs under ``<root>/runs/<run_id>/<path>``."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.is_local = "file" in self.fs.protocol or "local" in self.fs.protocol

    def _path(self, run_id: str, relpath: str) -> str:
        return posixpath.join(self.root, "runs", run_id, clean_relpath(relpath))

    def put_stream(self, run_id: str, relpath: str, source: BinaryIO) -> tuple[int, str]:
        """Copy ``source`` to the artifact; returns (size, sha256). Memory stays O(chunk)."""
        dest = self._path(run_id, relpath)
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with self.fs.open(tmp, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            self.fs.mv(tmp, dest)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return size, digest.hexdigest()

    def put_file(self, run_id: str, relpath: str, local: str | os.PathLike[str]) -> tuple[int, str]:
        with open(local, "rb") as source:
            return self.put_stream(run_id, relpath, source)

    def put_bytes(self, run_id: str, relpath: str, data: bytes) -> tuple[int, str]:
        import io

        return self.put_stream(run_id, relpath, io.BytesIO(data))

    def exists(self, run_id: str, relpath: str) -> bool:
        return bool(self.fs.exists(self._path(run_id, relpath)))

    def open(self, run_id: str, relpath: str) -> BinaryIO:
        path = self._path(run_id, relpath)
        if not self.fs.exists(path):
            raise NotFound(f"run {run_id} has no artifact {relpath!r}")
        return self.fs.open(path, "rb")

    def download(self, run_id: str, relpath: str, dest: str | os.PathLike[str]) -> Path:
        """Copy one artifact to ``dest`` (a file path, or a directory to put it in)."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / posixpath.basename(clean_relpath(relpath))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        with self.open(run_id, relpath) as source, open(tmp, "wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
        os.replace(tmp, dest)
        return dest
