"""Where a workspace's agent on this host keeps its lock, log and socket."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import MlopsError
from ...store import HOSTNAME


class AgentUnavailable(MlopsError):
    """The agent could not be reached or started; the caller starts the job cold instead."""


@dataclass(frozen=True)
class AgentPaths:
    lock: Path  # held (flock) by the living agent; holds its pid
    spawn_lock: Path  # held by a submitter while it starts an agent: one start at a time
    log: Path
    socket: Path

    @classmethod
    def for_workspace(cls, directory: Path) -> AgentPaths:
        folder = directory / "agent"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / f"{HOSTNAME}.lock", folder / f"{HOSTNAME}.spawn.lock",
                   folder / f"{HOSTNAME}.log", _socket_path(directory))

    def agent_pid(self) -> int | None:
        """The pid the last agent wrote in its lock file (it may be gone)."""
        try:
            return int(self.lock.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _socket_path(directory: Path) -> Path:
    """A short path (Unix socket paths are limited to 107 bytes) in a folder only this user
    may enter: the runtime folder, one socket per workspace and host."""
    root = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    folder = root / f"jupyter-mlops-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        # Someone else made it, or opened it up: a socket there could be theirs.
        raise AgentUnavailable(f"{folder} must be a folder of uid {os.getuid()} with mode 0700")
    key = hashlib.sha256(f"{HOSTNAME}\0{directory.resolve()}".encode()).hexdigest()[:24]
    return folder / f"{key}.sock"
