"""Process helpers shared by jobs (which start processes) and readers (which find them dead)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process and all its descendants (a kernel's data loaders, for example)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=timeout)


def spawn_detached(argv: list[str], *, env: dict[str, str], cwd: str | Path, log: Path
                   ) -> subprocess.Popen:
    """Start a process in its own session, so it outlives whoever started it (a notebook
    kernel, a shell): job runners and sweep controllers. Its output goes to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env, cwd=str(cwd))


def started_before(pid: int, recorded_at: float | None) -> bool:
    """False if ``pid`` now belongs to a process started after ``recorded_at`` (the process
    we knew died and its pid was reused): never kill a stranger."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    return recorded_at is None or created <= recorded_at + 1.0


def warn(text: str, stream: Any = None) -> None:
    """Write a one-line warning to ``stream`` (default: the process's real stderr), never
    raising: a background loop must survive a log file on a full disk."""
    try:
        out = stream or sys.__stderr__
        out.write(text.rstrip("\n") + "\n")
        out.flush()
    except (OSError, ValueError, AttributeError):
        pass
