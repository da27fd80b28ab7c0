"""Whether a run's job is still alive, judged from the store and this host: one rule for all.

A job beats its run's heartbeat every ``heartbeat_interval`` seconds while it waits for a slot
and while it runs, and records its pid and host. Its job is gone when

- it ran on this host and that process has ended (by any death), or
- it runs elsewhere (or recorded no pid) and its heartbeat is older than ``lost_after``.

Heartbeats are judged in the database's time: the store stamps them with its clock on
PostgreSQL (``Store.stamp_heartbeat``) and readers pass ``Store.clock()`` as ``now``, so a
machine whose clock is off never makes another machine's live run look lost.

A live process on this host is never taken for lost, however long it waits in the queue or
for a busy database. Readers *report* a run whose job is gone as ``lost`` (derived, nothing
written); the reaper (``jobs.reap``), in the processes that own jobs, stores that ending.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from .._processes import process_gone
from ._store import ACTIVE

HOSTNAME = socket.gethostname()


def stale_heartbeat(row: dict[str, Any], lost_after: float, now: float | None = None
                    ) -> str | None:
    """Why the run's heartbeat says its job is gone, or None while it beats."""
    now = time.time() if now is None else now
    beat = row["heartbeat_at"] or row.get("started_at") or row["created_at"]  # endpoints: none
    if now - beat <= lost_after:
        return None
    return f"no heartbeat for {now - beat:.0f} s: the job process vanished"


def job_gone(row: dict[str, Any], lost_after: float, now: float | None = None,
             active: Sequence[str] = ACTIVE) -> str | None:
    """Why an active run's job (or an endpoint's server: its ``active`` statuses differ) is
    gone, or None while it may be alive (see the module)."""
    if row["status"] not in active:
        return None
    if row["host"] == HOSTNAME and row["pid"]:
        if process_gone(row["pid"]):
            return f"the job process (pid {row['pid']}) died without reporting an end"
        return None
    return stale_heartbeat(row, lost_after, now)


def as_read(row: dict[str, Any], lost_after: float, reread: Any = None,
            active: Sequence[str] = ACTIVE, now: float | None = None) -> dict[str, Any]:
    """The row as readers see it: an active run whose job is gone reads as ``lost``.

    The stored row is left as it is (a read never writes). A job writes its ending before
    its process exits, so when the process is found gone the row is read once more
    (``reread``) before calling the run lost: that second read sees any ending.
    ``status_stored`` keeps what the database says. ``now`` is the time heartbeats are
    judged against: pass ``Store.clock()`` (database time on a shared database).
    """
    reason = job_gone(row, lost_after, now, active=active)
    if reason is not None and reread is not None:
        row = reread() or row
        reason = job_gone(row, lost_after, now, active=active)
    if reason is None:
        return row
    return {**row, "status": "lost", "status_stored": row["status"],
            "error": row["error"] or reason}
