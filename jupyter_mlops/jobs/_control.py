"""Stopping runs, and the reaper that records the ending of runs whose job is gone.

Reading a run never writes (``store._liveness`` only *reports* it lost). Storing ``lost``,
killing what a dead job left behind (a kernel holding a GPU) and cleaning its staging folder
happen here, in one function, called by the processes that own jobs (each job runner and
sweep controller, every ``REAP_EVERY`` seconds) and once by every process of this package
when it opens a workspace, so that after a crash or a reboot nothing stays active forever.
"""

from __future__ import annotations

import shutil
import threading

from .._processes import kill_tree, started_before, warn
from ..errors import NotFound
from ..store import ACTIVE, HOSTNAME, Backend, job_gone

REAP_EVERY = 10.0  # seconds between two reaper passes of a long-lived process

_watchers: dict[str, threading.Thread] = {}
_poked: set[str] = set()  # workspaces given new work since their watcher last looked
_watchers_lock = threading.Lock()


def cancel_run(backend: Backend, run_id: str, *, wait: bool = False) -> None:
    """Stop a run, wherever this is called from: the one write path of every surface.

    A queued run is canceled at once. A running job is asked to stop (its runner interrupts
    the kernel, then kills it and stores the files); its target kills the process tree if it
    is still active after its grace. ``wait=True`` blocks until the run has ended (for
    short-lived callers such as the CLI, whose exit would cut the enforcement short).
    """
    from ..compute import get_target

    row = backend.store.get_run_row(run_id)
    if row is None:
        raise NotFound(f"no run with id {run_id!r} in {backend.location.directory}")
    if row["status"] not in ACTIVE:
        return
    get_target(row["target"] or "local").cancel(backend, run_id, wait=wait)


def reap(backend: Backend) -> list[str]:
    """Store ``lost`` for every active run (and sweep) whose job is gone, kill the kernel
    it left on this host and clean its staging folder; returns the ids it marked.

    Never raises: a reaper that cannot write now (a locked or read-only database) tries
    again on its next pass, and the readers report those runs lost meanwhile.
    """
    try:
        return _reap(backend)
    except Exception as exc:
        warn(f"jupyter-mlops: reaper skipped a pass: {exc}")
        return []


def _reap(backend: Backend) -> list[str]:
    store, lost_after = backend.store, backend.config.lost_after
    marked, now = [], store.clock()  # database time on PostgreSQL: clocks may disagree
    for row in store.list_runs(status=ACTIVE):
        reason = job_gone(row, lost_after, now)
        if reason is None or not store.set_status(row["id"], "lost", only_from=ACTIVE,
                                                  error=reason):
            continue
        marked.append(row["id"])
        kernel = (row["resources"] or {}).get("kernel_pid")
        if kernel and row["host"] == HOSTNAME and started_before(
                kernel, row["started_at"] or row["heartbeat_at"]):
            kill_tree(kernel)  # an orphaned kernel would keep its GPU memory
        if row["host"] in (None, HOSTNAME):
            folder = backend.staging_dir(row["id"])
            try:  # salvage what the job wrote to its outputs folder before it died
                backend.store_outputs(row["id"], folder / "outputs")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    for row in store.list_sweeps(status=ACTIVE):
        reason = job_gone(row, lost_after, now)
        if reason is not None and store.set_sweep_status(
                row["id"], "lost", only_from=ACTIVE,
                error=f"the sweep controller stopped without finishing ({reason}); "
                      "resume() continues it"):
            marked.append(row["id"])
    return marked


def watch(backend: Backend) -> None:
    """Reap every ``REAP_EVERY`` seconds from this process while the workspace has active
    runs or sweeps (a daemon thread, one per workspace and process, gone when nothing is
    active). Called by the processes that submit work, so that a run whose job was killed
    is stored ``lost`` within ``REAP_EVERY + lost_after`` even when nobody reads it."""
    key = backend.location.database_url
    with _watchers_lock:
        if key in _watchers and _watchers[key].is_alive():
            _poked.add(key)  # it must not exit on a look taken before this new work
            return
        thread = threading.Thread(target=_watch, args=(backend,), daemon=True,
                                  name="mlops-reaper")
        _watchers[key] = thread
        thread.start()


def _watch(backend: Backend) -> None:
    key = backend.location.database_url
    pause = threading.Event()
    while True:
        with _watchers_lock:
            _poked.discard(key)
        pause.wait(REAP_EVERY)
        reap(backend)
        try:
            busy = (backend.store.list_runs(status=ACTIVE, limit=1)
                    or backend.store.list_sweeps(status=ACTIVE))
        except Exception:  # the database is away for now: look again next time
            busy = True
        with _watchers_lock:
            if not busy and key not in _poked:
                _watchers.pop(key, None)
                return
