"""Execute a job notebook with papermill in a fresh kernel, reporting to the store.

This is the one execution path of the project: ``jupyter mlops run`` and ``%%train`` both
end here. The runner process (``jupyter_mlops.jobs.runner``) owns the kernel; it streams the
kernel's output into the run's log, records which cell runs, beats the heartbeat, obeys a
cancel request or a timeout, and always writes an ending: artifacts first, then the status,
so a reader that sees the run ended also sees its files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._processes import kill_tree, warn
from ..compute import ClaimCanceled, get_target
from ..store import (
    ENV_HEADLESS,
    ENV_JOB_DIR,
    ENV_OUTPUTS_DIR,
    ENV_RUN_ID,
    ENV_SCHEMA_CHECKED,
    UNWRITTEN_FILE,
    Backend,
)
from ._control import REAP_EVERY, reap
from ._spec import JobSpec, fetch_inputs
from ._warm import WarmKernelDied

if TYPE_CHECKING:
    from ._warm import WarmKernel

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG_FLUSH_INTERVAL = 0.1
CANCEL_GRACE = 5.0  # seconds between the interrupt and the kill
PRUNE_GRACE = 10.0  # seconds a pruned trial has to notice should_stop() before the interrupt


ENDING_ATTEMPTS = 30  # a job's last writes are retried for about this many seconds


def retrying(write: Callable[[], Any], what: str) -> Any:
    """``write()``, tried again each second while the store refuses it (a full disk being
    freed, a lock): a job's ending must reach the store, or the run would read lost."""
    for attempt in range(ENDING_ATTEMPTS):
        try:
            return write()
        except Exception as exc:
            if attempt + 1 == ENDING_ATTEMPTS:
                raise
            if attempt == 0:
                warn(f"jupyter-mlops: {what} failed ({exc}); retrying")
            time.sleep(1.0)
    return None


OUTPUT_SCHEME = "mlops-output://"  # papermill writes the executed notebook through this


class TolerantOutput:
    """A papermill I/O handler for the executed notebook that survives a full disk.

    Papermill rewrites the executed notebook after every cell; a failed write (the disk
    filled for a moment) would fail the user's training. Here it is kept in memory instead,
    with a warning, and written once more when the run ends (``write_pending``).
    """

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}

    @staticmethod
    def _local(path: str) -> str:
        return path.removeprefix(OUTPUT_SCHEME)

    def read(self, path: str) -> str:
        with open(self._local(path), encoding="utf-8") as handle:
            return handle.read()

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._local(path))

    def write(self, buf: str, path: str) -> None:
        local = self._local(path)
        try:
            with open(local, "w", encoding="utf-8") as handle:
                handle.write(buf)
            self.pending.pop(local, None)
        except OSError as exc:
            if local not in self.pending:
                warn(f"jupyter-mlops: the executed notebook could not be saved ({exc}); "
                     "kept in memory, saved again at the end")
            self.pending[local] = buf

    def pretty_path(self, path: str) -> str:
        return self._local(path)

    def write_pending(self) -> None:
        for local, buf in list(self.pending.items()):
            with open(local, "w", encoding="utf-8") as handle:
                handle.write(buf)
            del self.pending[local]


SAVE_EVERY = 5.0  # seconds between two saves of the executed notebook while a run runs
ENGINE = "jupyter-mlops"  # our papermill engine: nbclient's, with fewer saves


def register_engine() -> None:
    """Register ``ENGINE`` with papermill (idempotent; papermill must be importable).

    papermill saves the executed notebook when the notebook starts, when each cell starts
    and ends, and at the end: serialising, validating and rewriting the whole file each
    time, about 6 ms a save here. On a sweep of short trials that was a quarter of a
    trial's own time, and nobody reads the file before the run ends (it is stored then).
    This engine is papermill's nbclient engine whose saves happen at most every
    ``SAVE_EVERY`` seconds while the run runs, and always at its end: the notebook written
    is the same, papermill's metadata included.
    """
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    class SparseSaves(NotebookExecutionManager):  # type: ignore[misc]
        ending = False

        def save(self, **kwargs: Any) -> None:
            if self.ending or (self.now() - self.last_save_time).total_seconds() >= SAVE_EVERY:
                super().save(**kwargs)

        def notebook_complete(self, **kwargs: Any) -> None:
            self.ending = True  # its final save always happens
            super().notebook_complete(**kwargs)

    class Engine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_notebook(cls, nb: Any, kernel_name: str, output_path: str | None = None,
                             progress_bar: bool = True, log_output: bool = False,
                             autosave_cell_every: int = 30, **kwargs: Any) -> Any:
            manager = SparseSaves(nb, output_path=output_path, progress_bar=progress_bar,
                                  log_output=log_output, autosave_cell_every=autosave_cell_every)
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output,
                                             **kwargs)
            finally:
                manager.cleanup_pbar()
                manager.notebook_complete()
            return manager.nb

    papermill_engines.register(ENGINE, Engine)  # a second registration replaces the first


class LogSink:
    """A file-like object papermill writes cell output to; batches it into the store."""

    def __init__(self, backend: Backend, run_id: str):
        self.backend, self.run_id = backend, run_id
        self._queue: deque[tuple[str, str, float]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-log", daemon=True)
        self._thread.start()

    def stream(self, name: str) -> _Stream:
        return _Stream(self, name)

    def write(self, stream: str, text: str) -> None:
        self._queue.append((stream, text, time.time()))

    def flush(self) -> None:
        batch = [self._queue.popleft() for _ in range(len(self._queue))]
        if batch:
            self.backend.store.append_logs(self.run_id, batch)

    def _loop(self) -> None:
        while not self._stop.wait(LOG_FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception as exc:  # keep running; the next round retries
                warn(f"jupyter-mlops: log write failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        retrying(self.flush, "storing the run's last log lines")


class _Stream:
    def __init__(self, sink: LogSink, name: str):
        self.sink, self.name = sink, name

    def write(self, text: str) -> int:
        self.sink.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass


class Watchdog:
    """Beats the heartbeat; interrupts then kills the kernel on cancel or timeout."""

    def __init__(self, backend: Backend, spec: JobSpec, kernel_pid: Callable[[], int | None]):
        self.backend, self.spec, self._kernel_pid = backend, spec, kernel_pid
        self.stop_reason: str | None = None  # "canceled", "pruned" or "timeout"
        self.stop_message: str | None = None
        self._stop_at = 0.0
        self._interrupted_at: float | None = None
        self._done = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="mlops-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_beat = last_reap = time.monotonic()
        while not self._done.wait(0.25):
            try:
                if time.monotonic() - last_beat >= self.backend.config.heartbeat_interval:
                    self.backend.store.heartbeat(self.spec.run_id)
                    last_beat = time.monotonic()
                if time.monotonic() - last_reap >= REAP_EVERY:  # other runs' dead jobs
                    reap(self.backend)
                    last_reap = time.monotonic()
                if self.stop_reason is None:
                    request = self.backend.store.stop_request(self.spec.run_id)
                    if request is not None:
                        self.stop_reason = "pruned" if request.startswith("pruned") else "canceled"
                        self.stop_message = request
                        # A pruned trial first gets time to stop by itself (should_stop()).
                        grace = PRUNE_GRACE if self.stop_reason == "pruned" else 0.0
                        self._stop_at = time.monotonic() + grace
            except Exception as exc:
                warn(f"jupyter-mlops: heartbeat failed: {exc}")
            timeout = self.spec.timeout
            if self.stop_reason is None and timeout and time.monotonic() - self._started > timeout:
                self.stop_reason = "timeout"
            if self.stop_reason and time.monotonic() >= self._stop_at:
                self._stop_kernel()

    def _stop_kernel(self) -> None:
        pid = self._kernel_pid()
        if pid is None:
            return
        now = time.monotonic()
        try:
            if self._interrupted_at is None:
                os.kill(pid, signal.SIGINT)
                self._interrupted_at = now
            elif now - self._interrupted_at > CANCEL_GRACE:
                kill_tree(pid)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _error_text(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        lines = [ANSI.sub("", line) for line in exc.traceback]
        return "\n".join(lines) or f"{exc.ename}: {exc.evalue}"
    return "".join(traceback.format_exception(exc))


KERNEL_START_ATTEMPTS = 3  # kernels started for one run when they die before answering


def _died_starting(exc: BaseException) -> bool:
    """jupyter_client's error for a kernel process that exited before its first reply."""
    return isinstance(exc, WarmKernelDied) or (
        isinstance(exc, RuntimeError) and "before replying to kernel_info" in str(exc))


def _is_dead_kernel(exc: BaseException) -> bool:
    """nbclient's DeadKernelError (nbclient is imported only once the kernel is launched)."""
    dead = getattr(sys.modules.get("nbclient.exceptions"), "DeadKernelError", None)
    return dead is not None and isinstance(exc, dead)


def _kernel_manager(kernel_name: str) -> Any:
    """An AsyncKernelManager that finds kernelspecs without importing IPython.

    jupyter_client's KernelSpecManager imports ``IPython.paths`` (hence all of IPython,
    prompt_toolkit and jedi: 0.5 s) only to add ``~/.ipython/kernels`` to its search path.
    We give it the same path list, worked out as IPython does, and keep the runner light.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_path

    ipython_dir = os.environ.get("IPYTHONDIR") or os.environ.get("IPYTHON_DIR")
    if not ipython_dir:
        ipython_dir = "~/.ipython"
        xdg = os.path.join(os.environ.get("XDG_CONFIG_HOME") or "~/.config", "ipython")
        if not os.path.exists(os.path.expanduser(ipython_dir)) and os.path.isdir(
                os.path.expanduser(xdg)):
            ipython_dir = xdg  # IPython <= 1.x's place, still honoured by IPython
    kernel_dirs = [*jupyter_path("kernels"),
                   os.path.join(os.path.normpath(os.path.expanduser(ipython_dir)), "kernels")]
    return AsyncKernelManager(
        kernel_name=kernel_name,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs),
    )


def _start_kernel(km: Any, cwd: str | None) -> None:
    """Launch the kernel process now; papermill (nbclient) then finds it started.

    The arguments are those nbclient would pass: IPython history in memory, the job's cwd.
    """
    from jupyter_core.utils import run_sync

    extra = ["--HistoryManager.hist_file=:memory:"] if getattr(km, "ipykernel", False) else []
    run_sync(km.start_kernel)(extra_arguments=extra, cwd=cwd)


def execute(backend: Backend, spec: JobSpec, warm: WarmKernel | None = None) -> str:
    """Wait for compute slots (the run stays ``queued``), then run the job to an ending,
    in the ``warm`` kernel if it fits the slots, else in a kernel started now."""
    try:
        return _claim_and_execute(backend, spec, warm)
    finally:
        # The run has ended (or never started): its inputs and outputs are in the store.
        shutil.rmtree(backend.staging_dir(spec.run_id), ignore_errors=True)
        pid = warm and warm.km.provisioner and warm.km.provisioner.pid
        if pid:  # a warm kernel the run never used (canceled while queued, say)
            kill_tree(pid)


def _claim_and_execute(backend: Backend, spec: JobSpec, warm: WarmKernel | None) -> str:
    if spec.parent_resources is not None:
        # This process is the run's job from now on (claim() records it on the other path).
        backend.store.update_run(spec.run_id, host=socket.gethostname(), pid=os.getpid(),
                                 heartbeat_at=time.time())
        shared = spec.parent_resources
        backend.store.merge_run_json(spec.run_id, "resources",
                                     {**shared, "shared_with_parent": True})
        return _execute_claimed(
            backend, spec, {"CUDA_VISIBLE_DEVICES": shared.get("cuda_visible_devices") or ""},
            warm)
    try:
        claim = get_target(spec.target).claim(backend, spec.run_id, spec.gpus)
    except ClaimCanceled:
        backend.store.set_status(spec.run_id, "canceled", only_from=("queued",),
                            error="canceled while queued")
        return backend.store.get_run_row(spec.run_id)["status"]
    with claim:  # the slot locks are held until the kernel is gone
        return _execute_claimed(backend, spec, claim.env(), warm)


def _execute_claimed(backend: Backend, spec: JobSpec, slot_env: dict[str, str],
                     warm: WarmKernel | None = None) -> str:
    """Run the job to an ending and record it; returns the final status.

    The kernel is launched first, before papermill is even imported: its boot (about
    0.7 s of Python imports in the kernel process) then overlaps our own remaining set-up
    (importing papermill, listing the environment) instead of following it. The
    environment is recorded before the status, as before; only its timing moved.
    """
    from .._environment import capture_environment

    store, run_id = backend.store, spec.run_id
    folder = fetch_inputs(backend, spec)
    notebook = str(folder / "input.ipynb")
    outputs = folder / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    output_nb = folder / "executed.ipynb"

    if not store.set_status(
        run_id, "starting", only_from=("queued",),
        started_at=time.time(), host=socket.gethostname(), pid=os.getpid(),
    ):  # canceled between the claim and now
        return store.get_run_row(run_id)["status"]
    environment = warm.environment if warm is not None else None  # captured while warm
    env_thread = threading.Thread(
        target=lambda: store.update_run(run_id, environment=environment
                                        or capture_environment()), daemon=True
    )

    # What the kernel's environment gets for this run: a cold kernel inherits os.environ,
    # a warm one is given it (WarmKernel.prepare).
    run_env = {**backend.location.to_env(), ENV_RUN_ID: run_id, ENV_OUTPUTS_DIR: str(outputs),
               ENV_JOB_DIR: str(folder), **slot_env, **spec.env,
               ENV_HEADLESS: "1" if spec.headless else "0",
               ENV_SCHEMA_CHECKED: store.schema_stamp()}
    if ((store.get_run_row(run_id) or {}).get("resources") or {}).get("datasets"):
        # --dataset inputs: local paths for mlops.dataset() in the kernel, recorded as inputs
        from ..errors import MlopsError
        from ..registry import job_datasets_env

        try:
            run_env.update(job_datasets_env(backend, run_id))
        except MlopsError as exc:
            store.set_status(run_id, "failed", error=f"the run's datasets are unavailable: {exc}")
            return "failed"
    os.environ.update(run_env)

    # Plain JSON: all we need is the kernel and which cells hold code. Validating it with
    # nbformat (60-100 ms to build the schema validator) is left to papermill, which reads
    # it again while the kernel boots. submit_notebook wrote it with nbformat (version 4).
    with open(notebook, encoding="utf-8") as handle:
        source = json.load(handle)
    code_cells = [i for i, c in enumerate(source.get("cells", []))
                  if c.get("cell_type") == "code"]
    total = len(code_cells)
    current: dict[str, Any] = {"index": None, "first_line": ""}

    def on_notebook_start(**_: Any) -> None:
        store.merge_run_json(run_id, "resources", {"kernel_pid": kernel_pid()})
        store.set_status(run_id, "running", only_from=("starting",))

    def on_cell_start(cell: Any, cell_index: int, **_: Any) -> None:
        if cell.cell_type != "code":
            return
        first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
        position = sum(1 for i in code_cells if i <= cell_index)
        current.update(index=position, first_line=first)
        store.update_run(
            run_id,
            progress={"cell": position, "cells": total, "source": first[:200],
                      "started_at": time.time()},
        )

    kernel_name = spec.kernel_name or (source.get("metadata") or {}).get(
        "kernelspec", {}).get("name") or "python3"
    if warm is not None and not warm.fits(kernel_name, slot_env):
        warm.discard()  # started for other devices (or another kernel): start one cold
        warm = None
    km = warm.km if warm is not None else _kernel_manager(kernel_name)

    def kernel_pid() -> int | None:
        provisioner = getattr(km, "provisioner", None)
        return getattr(provisioner, "pid", None) if provisioner else None

    sink = LogSink(backend, run_id)
    watchdog = Watchdog(backend, spec, kernel_pid)
    error: str | None = None
    output: TolerantOutput | None = None
    try:
        try:
            if warm is not None:
                warm.prepare(run_env, spec.cwd)  # done by papermill's client, when ready
            else:
                _start_kernel(km, spec.cwd)  # the kernel inherits os.environ as set above
            import papermill  # while the kernel boots
        finally:
            # Then the environment (0.3 s of reading package metadata), still beside the
            # boot; after the import, not during it, so the two do not share the GIL.
            env_thread.start()
        output = TolerantOutput()
        papermill.iorw.papermill_io.register(OUTPUT_SCHEME, output)
        register_engine()
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            try:
                papermill.execute_notebook(
                    notebook,
                    OUTPUT_SCHEME + str(output_nb),
                    parameters=spec.parameters,
                    kernel_name=km.kernel_name,
                    engine_name=ENGINE,
                    cwd=spec.cwd,
                    progress_bar=False,
                    log_output=False,
                    stdout_file=sink.stream("stdout"),
                    stderr_file=sink.stream("stderr"),
                    km=km,
                    on_notebook_start=on_notebook_start,
                    on_cell_start=on_cell_start,
                )
                break
            except RuntimeError as exc:
                # A kernel that dies before it answers ran none of the user's code (e.g. two
                # kernels started at once picked the same port): start another, as a person
                # would press restart. Once a cell has started, a death is the run's ending.
                if (not _died_starting(exc) or current["index"] is not None
                        or watchdog.stop_reason or attempt == KERNEL_START_ATTEMPTS):
                    raise
                if isinstance(exc, WarmKernelDied):  # it died before the run began
                    sink.write("stderr", f"jupyter-mlops: the warm kernel did not answer "
                                         f"({exc}); starting a new one\n")
                else:
                    sink.write("stderr", f"jupyter-mlops: the kernel died while starting "
                                         f"({exc}); starting another (attempt {attempt + 1} "
                                         f"of {KERNEL_START_ATTEMPTS})\n")
                if kernel_pid() is not None:
                    kill_tree(kernel_pid())
                warm = None
                km = _kernel_manager(kernel_name)
                _start_kernel(km, spec.cwd)
    except BaseException as exc:  # a cell raised, papermill failed, or we were interrupted
        if _is_dead_kernel(exc):
            error = (
                f"the kernel died while running cell {current['index']} of {total} "
                f"({current['first_line']!r}): killed by a signal or out of memory"
            )
        else:
            error = _error_text(exc)
    finally:
        watchdog.close()
        if output is not None and output.pending:
            try:
                retrying(output.write_pending, "saving the executed notebook")
            except OSError as exc:
                warn(f"jupyter-mlops: the executed notebook was not saved: {exc}")
        if error:
            sink.write("stderr", "\n" + error + "\n")
        sink.close()
        if kernel_pid() is not None:
            kill_tree(kernel_pid())  # never leave a kernel holding a GPU behind

    return _finish(backend, spec, watchdog.stop_reason, watchdog.stop_message, error, outputs,
                   output_nb, env_thread)


def _finish(
    backend: Backend,
    spec: JobSpec,
    stop_reason: str | None,
    stop_message: str | None,
    error: str | None,
    outputs: Path,
    output_nb: Path,
    env_thread: threading.Thread,
) -> str:
    store, run_id = backend.store, spec.run_id
    stored_error = None

    def store_files() -> None:
        backend.store_outputs(run_id, outputs)
        if output_nb.exists():
            size, digest = backend.artifacts.put_file(run_id, "notebook.ipynb", output_nb)
            store.record_artifact(run_id, "notebook.ipynb", size, digest)

    try:
        # Artifact writes are atomic (temporary name, then rename), so trying again after a
        # full disk is freed leaves no partial file; the run's work is not failed for a moment.
        retrying(store_files, "storing the run's files")
    except Exception as exc:
        stored_error = f"storing the run's files failed: {exc}"
    env_thread.join(timeout=30)

    unwritten = outputs.parent / UNWRITTEN_FILE  # the kernel's last points, not stored
    if unwritten.exists():
        problem = json.loads(unwritten.read_text())["problem"]
        error = f"{error}\n{problem}" if error else problem
    if stop_reason == "pruned":
        status, message = "pruned", stop_message  # metrics so far are kept, as for any ending
    elif stop_reason == "canceled":
        status, message = "canceled", stop_message or "canceled by request"
    elif stop_reason == "timeout":
        status, message = "failed", f"timed out after {spec.timeout:g} s"
    elif error:
        status, message = "failed", error
    elif stored_error:
        status, message = "failed", stored_error
    else:
        status, message = "completed", None
    retrying(lambda: store.set_status(run_id, status, error=message), "recording the ending")
    return status
