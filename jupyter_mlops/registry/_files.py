"""Files of registered models and dataset snapshots: where they come from, how they are
copied into the artifact store, hashed, downloaded and checked.

Every copy streams in fixed-size chunks (memory stays O(chunk) whatever the size) and hashes
what it copies in the same pass, so the stored hash describes exactly the stored bytes.

Atomicity comes from the order of operations, not from locks: a version's files are written
into a fresh folder ``<kind>/<name>/<uuid>/`` that nothing references yet; the database row
that makes the version exist is inserted after the last byte is written. A registration
killed half way therefore leaves an unreferenced folder (removed by ``gc``), never a half
version. Deleting does the reverse: the row goes first, then the folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import queue
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from .._format import human_bytes  # noqa: F401 - re-exported for registry modules
from ..errors import InvalidInput, NotFound, WorkspaceError

CHUNK = 4 << 20  # 4 MiB: large enough for ~1 GB/s through hashlib, small enough to not matter
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 128


def check_name(name: object, what: str = "model") -> str:
    """A registry name: letters, digits, ``.``, ``-``, ``_``; safe as one path segment."""
    if not isinstance(name, str):
        raise InvalidInput(f"{what} name must be a string, got {type(name).__name__} {name!r}")
    if not name:
        raise InvalidInput(f"{what} name must not be empty")
    problem = None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains control characters"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif any(c.isspace() for c in name):
        problem = "contains spaces"
    elif ":" in name or "@" in name:
        problem = f"contains {':' if ':' in name else '@'}, which separates a version"
    elif len(name) > MAX_NAME:
        problem = f"is {len(name)} characters long (the limit is {MAX_NAME})"
    elif not NAME_PATTERN.fullmatch(name):
        problem = "may only use letters, digits, '.', '-' and '_', starting with a letter or digit"
    if problem:
        raise InvalidInput(
            f"{what} name {name!r} {problem}; use a name like 'mnist-cnn' or 'pets_v2'"
        )
    return name


def parse_ref(ref: str, version: int | str | None, what: str = "model"
              ) -> tuple[str, int | str]:
    """``("mnist:3", None)`` or ``("mnist", 3)`` → ``("mnist", 3)``; versions are numbers,
    ``"latest"`` or (models only) an alias."""
    if not isinstance(ref, str):
        raise InvalidInput(f"{what} must be given by name, got {type(ref).__name__}")
    name, sep, tail = ref.partition(":")
    if sep and version is not None and str(version) != tail:
        raise InvalidInput(f"{ref!r} already names a version; don't pass version={version!r}")
    if sep:
        version = tail
    check_name(name, what)
    return name, parse_version(version, what)


def parse_version(version: int | str | None, what: str = "model") -> int | str:
    if version is None or version == "":
        return "latest"
    if isinstance(version, bool):
        raise InvalidInput(f"a {what} version is a number, 'latest' or an alias, got {version!r}")
    if isinstance(version, int) or (isinstance(version, str) and version.isdigit()):
        number = int(version)
        if number < 1:
            raise InvalidInput(f"{what} versions start at 1, got {version!r}")
        return number
    if not isinstance(version, str):
        raise InvalidInput(f"a {what} version is a number, 'latest' or an alias, got {version!r}")
    if version == "latest":
        return version
    if what != "model":
        raise InvalidInput(f"a {what} version is a number or 'latest', got {version!r}")
    return check_alias(version)


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", alias):
        raise InvalidInput(
            f"an alias is a word such as 'production' or 'staging' (letters, digits, '-', '_', "
            f"starting with a letter, at most 64 characters), got {alias!r}"
        )
    if alias == "latest":
        raise InvalidInput("'latest' always means the newest version; it cannot be set as alias")
    return alias


def check_tags(tags: object) -> dict[str, str]:
    """Tags are string keys with string values (other scalars are converted)."""
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise InvalidInput(f"tags must be a dict of key → value, got {type(tags).__name__}")
    clean = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key.strip() or any(ord(c) < 32 for c in key):
            raise InvalidInput(f"tag key {key!r} must be a non-empty string without "
                               "control characters")
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise InvalidInput(f"tag {key!r} must be a string or a number, got "
                               f"{type(value).__name__}")
        clean[key] = "" if value is None else str(value)
    return clean


# -- sources --------------------------------------------------------------------------------


@dataclass
class SourceFile:
    relpath: str  # inside the model or dataset ("model.pkl", "weights/layer1.bin")
    size: int
    open: Callable[[], BinaryIO]
    local_path: str | None = None  # when it is a local file: copied by the kernel


@dataclass
class Source:
    """What is about to be registered: one file or the files of a folder."""

    kind: str  # "file" | "folder"
    root_name: str  # the file's or the folder's own name
    uri: str  # the location, as recorded (absolute path or URL)
    files: list[SourceFile] = field(default_factory=list)
    local_root: Path | None = None  # the local path, when it is one
    # "files:bytes:newest mtime (ns)" of local data: a cheap sign that it may have changed
    fingerprint: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def local_source(path: str | os.PathLike[str], what: str = "model") -> Source:
    """A local file or folder; refuses what is missing, empty or not a regular file."""
    p = Path(path).expanduser()
    try:
        info = p.stat()
    except FileNotFoundError:
        raise NotFound(f"cannot register {what} from {str(path)!r}: no such file or folder"
                       ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {str(path)!r}: {exc.strerror}") from None
    p = p.resolve()
    if stat.S_ISREG(info.st_mode):
        return Source("file", p.name, str(p),
                      [SourceFile(p.name, info.st_size, opener(str(p)), str(p))],
                      local_root=p, fingerprint=f"1:{info.st_size}:{info.st_mtime_ns}")
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{str(path)!r} is not a regular file or a folder")
    files, odd, newest = [], [], 0
    # Links are followed only while they stay inside the folder: a link out of it would copy
    # files the user did not choose to register (or, for a folder link, silently drop them).
    for folder, dirs, names in os.walk(p, onerror=_raise_walk_error, followlinks=True):
        dirs.sort()
        for name in dirs:
            full = os.path.join(folder, name)
            if os.path.islink(full):
                _check_link(p, full, path, what, loops=True)
        for name in sorted(names):
            full = os.path.join(folder, name)
            rel = Path(full).relative_to(p).as_posix()
            if os.path.islink(full) and os.path.exists(full):
                _check_link(p, full, path, what)
            try:
                st = os.stat(full)  # follows a link inside the folder: registered by content
            except OSError as exc:
                raise InvalidInput(f"cannot read {rel!r} in {str(path)!r}: {exc.strerror}"
                                   + (" (a broken symlink)" if os.path.islink(full) else "")
                                   ) from None
            if not stat.S_ISREG(st.st_mode):
                odd.append(rel)
                continue
            files.append(SourceFile(rel, st.st_size, opener(full), full))
            newest = max(newest, st.st_mtime_ns)
    if odd:
        raise InvalidInput(f"{str(path)!r} holds entries that are not regular files "
                           f"(pipes, sockets, devices): {', '.join(odd[:5])}")
    if not files:
        raise InvalidInput(f"folder {str(path)!r} is empty: there is nothing to register")
    return Source("folder", p.name, str(p), files, local_root=p,
                  fingerprint=f"{len(files)}:{sum(f.size for f in files)}:{newest}")


def _check_link(root: Path, full: str, given: Any, what: str, loops: bool = False) -> None:
    """Refuse a link (file or folder) of the folder ``root`` that leads out of it, or, for a
    folder link (``loops``), back to a folder it is already inside (an endless walk)."""
    rel = Path(full).relative_to(root).as_posix()
    target = os.readlink(full)
    real = Path(os.path.realpath(full))
    where = f"cannot register {what} from {str(given)!r}: {rel!r} is a link to {target!r}"
    if real != root and root not in real.parents:
        raise InvalidInput(f"{where}, outside the folder; links out of a registered folder are "
                           "not followed: copy what it points to into the folder (or remove the "
                           "link) and register again")
    if loops:
        # The real folders on the way from the root to this link: reaching one again loops.
        above = Path(full).parent.relative_to(root).parts
        chain = {root, *(Path(os.path.realpath(root.joinpath(*above[:i + 1])))
                         for i in range(len(above)))}
        if real in chain:
            raise InvalidInput(f"{where}, a folder it is inside, which would loop forever; "
                               "remove the link (or copy the files it should add) and register "
                               "again")


def _raise_walk_error(exc: OSError) -> None:
    raise InvalidInput(f"cannot read {exc.filename!r}: {exc.strerror}")


def is_url(text: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text))


def url_source(url: str, what: str = "dataset") -> Source:
    """A file or folder behind an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...)."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InvalidInput(f"cannot open {url!r}: {exc}") from None
    if not fs.exists(root):
        raise NotFound(f"cannot register {what} from {url!r}: nothing there")
    name = posixpath.basename(root.rstrip("/")) or "data"
    if fs.isfile(root):
        size = int(fs.size(root) or 0)
        return Source("file", name, url, [SourceFile(name, size, lambda: fs.open(root, "rb"))])
    found = fs.find(root, detail=True)
    files = []
    prefix = root.rstrip("/") + "/"
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        files.append(SourceFile(rel, int(info.get("size") or 0),
                                lambda path=path: fs.open(path, "rb")))
    if not files:
        raise InvalidInput(f"folder {url!r} is empty: there is nothing to register")
    return Source("folder", name, url, files)


# -- copying and hashing --------------------------------------------------------------------


def manifest_hash(kind: str, files: list[tuple[str, int, str]]) -> str:
    """The content hash of a model or dataset version: sha256 over its sorted file list."""
    digest = hashlib.sha256(f"{kind}\n".encode())
    for path, size, sha in sorted(files):
        digest.update(f"{path}\0{size}\0{sha}\n".encode())
    return digest.hexdigest()


def pump(source: BinaryIO, sink: BinaryIO | None, buffer: bytearray) -> tuple[int, str]:
    """Copy ``source`` to ``sink`` (or only read it), hashing; returns (size, sha256)."""
    digest, size, view = hashlib.sha256(), 0, memoryview(buffer)
    readinto = getattr(source, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                break
            chunk = view[:n]
        else:  # some fsspec files only have read()
            data = source.read(CHUNK)
            if not data:
                break
            chunk, n = memoryview(data), len(data)
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += n
    return size, digest.hexdigest()


def hash_files(source: Source) -> list[tuple[str, int, str]]:
    """(relpath, size, sha256) of every file of ``source``, read once, streaming.

    Files are hashed on a few threads (hashlib and file reads release the GIL), so a
    folder of many files hashes at the speed of several cores.
    """
    local = threading.local()

    def one(item: SourceFile) -> tuple[str, int, str]:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = bytearray(CHUNK)
        with item.open() as handle:
            return (item.relpath, *pump(handle, None, buffer))

    workers = min(4, os.cpu_count() or 1, len(source.files))
    if workers <= 1:
        return [one(item) for item in source.files]
    with ThreadPoolExecutor(workers, thread_name_prefix="mlops-hash") as pool:
        return list(pool.map(one, source.files))


class LocalCopier:
    """Copies local files with the kernel's ``copy_file_range`` (no pass through Python
    buffers, as ``shutil.copyfile`` does) while a second thread hashes what was written,
    segment by segment, reading it back from the page cache.

    Hashing the destination, not the source, makes the recorded hash describe exactly the
    stored bytes even if the source changes meanwhile. Copy and hash overlap (inside a large
    file and across files), so on two cores the pipeline runs at about the speed of sha256
    alone. Memory: one ``CHUNK`` buffer and a bounded queue of segment offsets.
    """

    SEGMENT = 32 << 20

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=256)
        self._results: dict[int, tuple[int, str]] = {}
        self._error: BaseException | None = None
        self._count = 0
        self._thread = threading.Thread(target=self._hash_loop, name="mlops-hash", daemon=True)
        self._thread.start()

    def copy(self, src: str, dest: str) -> int:
        """Copy ``src`` to ``dest`` (parent folders created); returns a ticket for
        ``finish``."""
        if self._error is not None:
            raise self._error
        ticket = self._count
        self._count += 1
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(src, "rb") as source, open(dest, "wb") as sink:
            self._queue.put(("open", ticket, dest))
            offset = 0
            while n := _copy_segment(source, sink, self.SEGMENT):
                self._queue.put(("segment", offset, n))
                offset += n
            sink.flush()
        self._queue.put(("close", ticket))
        return ticket

    def finish(self) -> list[tuple[int, str]]:
        """Wait for the hashing to catch up; (size, sha256) per ticket, in order."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return [self._results[i] for i in range(self._count)]

    def abort(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _hash_loop(self) -> None:
        view = memoryview(bytearray(CHUNK))
        fd, digest, size = -1, hashlib.sha256(), 0
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the copying side never blocks on a full queue
            try:
                if item[0] == "open":
                    fd, digest, size = os.open(item[2], os.O_RDONLY), hashlib.sha256(), 0
                elif item[0] == "segment":
                    offset, left = item[1], item[2]
                    while left:
                        got = os.preadv(fd, [view[:min(left, CHUNK)]], offset)
                        if not got:
                            raise OSError(f"{item} ended early while hashing")
                        digest.update(view[:got])
                        offset, left, size = offset + got, left - got, size + got
                else:  # close
                    os.close(fd)
                    fd = -1
                    self._results[item[1]] = (size, digest.hexdigest())
            except BaseException as exc:
                self._error = exc
                if fd >= 0:
                    os.close(fd)
                    fd = -1


_KERNEL_COPY = hasattr(os, "copy_file_range")


def _copy_segment(source: BinaryIO, sink: BinaryIO, length: int) -> int:
    """Copy up to ``length`` bytes at the files' positions; 0 at the end of ``source``."""
    global _KERNEL_COPY
    if _KERNEL_COPY:
        try:
            return os.copy_file_range(source.fileno(), sink.fileno(), length)
        except OSError as exc:  # e.g. EXDEV across filesystems on old kernels, EINVAL on
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,  # some FUSE
                                 errno.EOPNOTSUPP, errno.EPERM):
                raise
            _KERNEL_COPY = False
    data = source.read(min(length, CHUNK))
    sink.write(data)
    sink.flush()  # the hashing thread reads the copy by its own descriptor, right after
    return len(data)


class Blobs:
    """Folders of registered files under ``<artifact root>/<area>/<name>/<uuid>/``."""

    def __init__(self, backend: Any, area: str):
        self.backend = backend
        self.area = area  # "models" | "datasets"
        self.fs = backend.artifacts.fs
        self.root = backend.artifacts.root
        self.is_local = backend.artifacts.is_local

    def full(self, storage: str, relpath: str = "") -> str:
        base = posixpath.join(self.root, storage)
        return posixpath.join(base, relpath) if relpath else base

    def new_storage(self, name: str) -> str:
        return f"{self.area}/{name}/{uuid.uuid4().hex}"

    def write(self, storage: str, source: Source) -> list[tuple[str, int, str]]:
        """Copy every file of ``source`` into ``storage``; returns their (path, size, sha).

        On any error the folder is removed again, so bad input leaves nothing behind.
        """
        buffer = bytearray(CHUNK)
        stored: list[tuple[str, int, str] | int] = []
        copier = LocalCopier() if self.is_local else None
        try:
            for item in source.files:
                dest = self.full(storage, item.relpath)
                if copier is not None and item.local_path is not None:
                    stored.append(copier.copy(item.local_path, dest))  # hashed by finish()
                    continue
                with item.open() as src, self._open_write(dest) as out:
                    size, sha = pump(src, out, buffer)
                stored.append((item.relpath, size, sha))
            hashed = copier.finish() if copier is not None else []
            copier = None
        except BaseException as exc:
            if copier is not None:
                copier.abort()
            self.remove(storage)
            if isinstance(exc, OSError):  # unreadable source, full disk, ...: say which
                raise WorkspaceError(f"copying {source.uri} into the artifact store failed: "
                                     f"{exc}") from exc
            raise
        return [(item.relpath, *hashed[entry]) if isinstance(entry, int) else entry
                for item, entry in zip(source.files, stored, strict=True)]

    def _open_write(self, path: str) -> BinaryIO:
        if self.is_local:  # plain files: the fastest path, and what fsspec does underneath
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return open(path, "wb")
        return self.fs.open(path, "wb")

    def open(self, storage: str, relpath: str) -> BinaryIO:
        path = self.full(storage, relpath)
        try:
            return open(path, "rb") if self.is_local else self.fs.open(path, "rb")
        except FileNotFoundError:
            raise WorkspaceError(
                f"the stored file {relpath!r} is missing from {self.full(storage)}: the "
                "artifact store was changed outside jupyter-mlops"
            ) from None

    def remove(self, storage: str) -> None:
        path = self.full(storage)
        try:
            if self.is_local:
                shutil.rmtree(path, ignore_errors=True)
            elif self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError:
            pass  # left for gc

    def download(
        self,
        storage: str,
        files: list[tuple[str, int, str]],
        dest: Path,
        kind: str,
    ) -> None:
        """Copy a stored version to ``dest`` (a file for kind "file", else a folder),
        checking every file's hash; ``dest`` appears only when complete (temp + rename)."""
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        buffer = bytearray(CHUNK)
        copier = LocalCopier() if self.is_local else None
        try:
            got: list[tuple[int, str] | int] = []
            for relpath, _, _ in files:
                target = tmp if kind == "file" else tmp / relpath
                if copier is not None:
                    source = self.full(storage, relpath)
                    if not os.path.isfile(source):
                        self.open(storage, relpath)  # raises the "missing" error
                    got.append(copier.copy(source, str(target)))
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.open(storage, relpath) as src, open(target, "wb") as out:
                    got.append(pump(src, out, buffer))
            hashed = copier.finish() if copier is not None else []
            copier = None
            for (relpath, size, sha), entry in zip(files, got, strict=True):
                got_size, got_sha = hashed[entry] if isinstance(entry, int) else entry
                if (got_size, got_sha) != (size, sha):
                    raise WorkspaceError(
                        f"stored file {relpath!r} does not match its recorded hash "
                        f"(sha256 {got_sha[:12]}… vs {sha[:12]}…): the artifact store is "
                        "corrupted or was changed outside jupyter-mlops"
                    )
            os.replace(tmp, dest) if kind == "file" else tmp.rename(dest)
        except BaseException as exc:
            if copier is not None:
                copier.abort()
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise WorkspaceError(f"downloading to {dest} failed: {exc}") from exc
            raise

    def orphans(self, referenced: set[str], older_than: float) -> list[str]:
        """Storage folders no version references, untouched for ``older_than`` seconds."""
        base = posixpath.join(self.root, self.area)
        if not self.fs.exists(base):
            return []
        found = []
        now = time.time()
        for name_dir in self.fs.ls(base, detail=False):
            if not self.fs.isdir(name_dir):
                continue
            for folder in self.fs.ls(name_dir, detail=False):
                storage = posixpath.relpath(folder, self.root)
                if storage in referenced or not self.fs.isdir(folder):
                    continue
                if now - _newest_mtime(self.fs, folder) >= older_than:
                    found.append(storage)
        return sorted(found)


def _newest_mtime(fs: Any, folder: str) -> float:
    """The newest modification time of the files under ``folder`` (an empty folder: its
    own). A file whose store gives no time counts as new: never delete what we can't date."""
    files = [info for info in fs.find(folder, detail=True).values()
             if info.get("type") != "directory"]
    newest = 0.0
    for info in files or [fs.info(folder)]:
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        if stamp is None:
            if not files:
                return 0.0  # an empty folder without a date: nothing in it to lose
            return time.time()
        newest = max(newest, float(stamp))
    return newest
