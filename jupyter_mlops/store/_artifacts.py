"""Artifact files under an fsspec root (a local folder by default, object storage by URL).

Every write goes to a temporary name first and is then renamed (or, on object stores,
committed by the single PUT), so a reader never sees half a file and a job killed mid-copy
leaves at most a ``.tmp-*`` file nobody references.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
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


_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")


def check_served_path(path: str) -> str:
    """An artifact path asked for from outside (a URL), refused unless it is plainly a path
    inside the run: no ``..`` or ``.`` segment, no leading ``/``, no backslash, no empty
    segment, no control character and nothing still percent-encoded (a URL decoded once
    that still holds ``%2e`` or ``%2f`` was encoded twice to slip past a check)."""
    raw = str(path)
    parts = raw.split("/")
    if (not raw or raw.startswith(("/", "~")) or "\\" in raw or _ENCODED.search(raw)
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in raw)
            or any(part in ("", ".", "..") for part in parts)):
        raise InvalidInput("an artifact path must be a plain relative path inside the run "
                           "(no '..', no leading '/', no backslash, nothing percent-encoded)")
    return raw


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

    def open_confined(self, run_id: str, relpath: str) -> tuple[BinaryIO, int]:
        """Open an artifact for serving, with its size; refused when the file, or a folder
        on its way, is a symbolic link leading out of the run's artifact folder."""
        path = self._path(run_id, relpath)
        if not self.is_local:
            if not self.fs.exists(path):
                raise NotFound(f"run {run_id} has no artifact {relpath!r}")
            return self.fs.open(path, "rb"), int(self.fs.size(path))
        base = os.path.realpath(posixpath.join(self.root, "runs", run_id))
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) != base or real == base:
            raise InvalidInput(f"artifact {relpath!r} of run {run_id} leads out of the run")
        try:
            # O_NOFOLLOW: a link swapped in after the check above is refused, not followed.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise NotFound(f"run {run_id} has no artifact {relpath!r}") from None
        except OSError:
            raise InvalidInput(f"artifact {relpath!r} of run {run_id} cannot be served"
                               ) from None
        handle = os.fdopen(fd, "rb")
        if not os.path.isfile(real):
            handle.close()
            raise InvalidInput(f"artifact {relpath!r} of run {run_id} is not a file")
        return handle, os.fstat(fd).st_size

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
