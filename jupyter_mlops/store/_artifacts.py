"""Artifact files under an fsspec root (a local folder by default, object storage by URL).

Every write goes to a temporary name first and is then renamed (on object stores: the
object appears only when its upload completes), so a reader never sees half a file and a
job killed mid-copy leaves at most a ``.tmp-*`` file (or an unfinished upload) nobody
references.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import fsspec

from ..errors import InvalidInput, MlopsError, NotFound, WorkspaceError

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


def shown_url(url: str) -> str:
    """``url`` fit for a message: without a user name or password written into it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname or ""))


class ArtifactStoreUnavailable(WorkspaceError):
    """The artifact URL cannot be used: unknown scheme, unreachable endpoint, missing bucket."""


AREAS = ("runs", "sweeps")  # files of a run; inputs a sweep's trials share


class ArtifactStore:
    """Files of runs under ``<root>/runs/<run_id>/<path>`` (and the inputs a sweep's trials
    share, under ``<root>/sweeps/<sweep_id>/<path>``: pass ``area="sweeps"``).

    ``url`` is any fsspec URL (a local folder, ``s3://bucket/prefix``...) and ``options``
    its storage options (``WorkspaceConfig.artifact_options``). Every process that opens the
    workspace (jobs, scoring servers, the REST server) reaches the files through this URL,
    never through the submitter's local paths.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url
        options = dict(options or {})
        try:
            protocol = fsspec.core.split_protocol(url)[0] or "file"
            if protocol not in ("file", "local"):
                # Other processes write here too (jobs, other users): a listing cached by
                # this process would hide their new files, so none is kept.
                options.setdefault("use_listings_cache", False)
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        except Exception as exc:  # unknown protocol, missing driver (s3fs), bad option
            raise ArtifactStoreUnavailable(
                f"cannot open the artifact store {shown_url(url)}: {_reason(exc)}; check "
                "JUPYTER_MLOPS_ARTIFACT_URL / WorkspaceConfig.artifact_url and its options"
            ) from None
        self.is_local = "file" in self.fs.protocol or "local" in self.fs.protocol

    def check(self) -> None:
        """Fail now, with one line naming the URL, when a remote store cannot be reached or
        its bucket is missing, rather than at a job's end with its results in hand.
        A local folder is created on first write, so it is not checked."""
        if self.is_local:
            return
        top = self.root.split("/", 1)[0]  # the bucket (or container) of object stores
        try:
            if not top:  # a path-based store (sftp://host/..., memory://): made on first write
                self.fs.exists(self.root)
                return
            self.fs.info(top)  # one HEAD of the bucket
        except FileNotFoundError:
            raise ArtifactStoreUnavailable(
                f"the artifact store {shown_url(self.url)} does not exist (no bucket "
                f"{top!r}); create it, or fix JUPYTER_MLOPS_ARTIFACT_URL") from None
        except Exception as exc:
            raise ArtifactStoreUnavailable(
                f"the artifact store {shown_url(self.url)} cannot be reached ({_reason(exc)}); "
                "check its URL, endpoint_url (artifact_options) and credentials") from None

    @contextmanager
    def _remote(self, doing: str, writing: bool = False) -> Iterator[None]:
        """Errors of a remote store (the endpoint gone, credentials refused, the bucket
        removed under a write) as one line naming the store; a file missing on a read stays
        a missing file, and local folders keep their own errors (a full disk, a permission)."""
        try:
            yield
        except MlopsError:
            raise
        except Exception as exc:
            if self.is_local or (isinstance(exc, FileNotFoundError) and not writing):
                raise
            raise ArtifactStoreUnavailable(
                f"{doing} in the artifact store {shown_url(self.url)} failed ({_reason(exc)}); "
                "check that it is reachable and the credentials allow it") from None

    def _path(self, run_id: str, relpath: str, area: str = "runs") -> str:
        if area not in AREAS:
            raise InvalidInput(f"artifact area {area!r} is not one of {', '.join(AREAS)}")
        return posixpath.join(self.root, area, clean_relpath(run_id), clean_relpath(relpath))

    def put_stream(self, run_id: str, relpath: str, source: BinaryIO, area: str = "runs"
                   ) -> tuple[int, str]:
        """Copy ``source`` to the artifact; returns (size, sha256). Memory stays O(chunk)."""
        dest = self._path(run_id, relpath, area)
        digest = hashlib.sha256()
        if self.is_local:
            size = self._put_renamed(dest, source, digest)
        else:
            size = self._put_object(dest, source, digest,
                                    f"writing {relpath!r} of run {run_id}")
        return size, digest.hexdigest()

    def _put_renamed(self, dest: str, source: BinaryIO, digest: Any) -> int:
        """A folder: write a temporary name, then rename it into place."""
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        size = 0
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
        return size

    def _put_object(self, dest: str, source: BinaryIO, digest: Any, doing: str) -> int:
        """An object store: no rename there (a move is a copy and a delete), and an object
        appears only when its upload is completed at close; on an error the upload is
        discarded instead, so nothing partial is ever visible. Errors of the source are
        the caller's; only the store's own are reported as the store's."""
        with self._remote(doing, writing=True):
            out = self.fs.open(dest, "wb")
        size = 0
        try:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                with self._remote(doing, writing=True):
                    out.write(chunk)
                size += len(chunk)
        except BaseException:
            out.discard()
            out.closed = True  # closing would complete the upload
            raise
        with self._remote(doing, writing=True):
            out.close()
        return size

    def put_file(self, run_id: str, relpath: str, local: str | os.PathLike[str],
                 area: str = "runs") -> tuple[int, str]:
        with open(local, "rb") as source:
            return self.put_stream(run_id, relpath, source, area)

    def put_bytes(self, run_id: str, relpath: str, data: bytes, area: str = "runs"
                  ) -> tuple[int, str]:
        import io

        return self.put_stream(run_id, relpath, io.BytesIO(data), area)

    def exists(self, run_id: str, relpath: str, area: str = "runs") -> bool:
        with self._remote(f"looking for {relpath!r} of run {run_id}"):
            return bool(self.fs.exists(self._path(run_id, relpath, area)))

    def open(self, run_id: str, relpath: str, area: str = "runs") -> BinaryIO:
        path = self._path(run_id, relpath, area)
        with self._remote(f"reading {relpath!r} of run {run_id}"):
            try:
                return self.fs.open(path, "rb")
            except FileNotFoundError:
                raise NotFound(f"run {run_id} has no artifact {relpath!r}") from None

    def open_confined(self, run_id: str, relpath: str) -> tuple[BinaryIO, int]:
        """Open an artifact for serving, with its size; refused when the file, or a folder
        on its way, is a symbolic link leading out of the run's artifact folder."""
        path = self._path(run_id, relpath)
        if not self.is_local:  # no links in an object store: every key is a plain file
            handle = self.open(run_id, relpath)
            return handle, int(handle.size)
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

    def download(self, run_id: str, relpath: str, dest: str | os.PathLike[str],
                 area: str = "runs") -> Path:
        """Copy one artifact to ``dest`` (a file path, or a directory to put it in)."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / posixpath.basename(clean_relpath(relpath))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.open(run_id, relpath, area) as source, open(tmp, "wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest


def _reason(exc: BaseException) -> str:
    """The first line of an error, without anything that looks like a secret."""
    text = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
    return re.sub(r"(?i)(secret|password|token|key)[^\s,;]*\s*[=:]\s*\S+", r"\1=***", text)
