"""The in-run logging API: ``log``, ``log_params``, ``log_image``, ``outputs_dir``,
``current_run``, ``start_run``, ``should_stop``.

``log()`` only validates and appends to an in-memory queue (a deque: appends and pops are
atomic, so no lock on the hot path); a background thread writes the queue to the store in
batches every ``FLUSH_INTERVAL`` seconds, on ``flush()``, at the end of each notebook cell,
at the end of the run and at interpreter exit. A training loop therefore never waits for
the database, and a bad value fails at the call that passed it, never later in the thread.

Which run a call logs to: the innermost ``start_run`` block of the calling thread (the
stack is a ``contextvars`` variable, so two threads in ``start_run`` never log into each
other's runs), else the newest ``start_run`` block still open in this process (so a helper
thread started inside a block logs to it), else the run this process was started for (a
job sets ``JUPYTER_MLOPS_RUN_ID`` for its kernel).

This is the top of the in-run API: it hands out the facade's ``Run`` objects, so it sits
above ``jupyter_mlops.api``; nothing below imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import io
import json
import math
import numbers
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any

from ._inputs import check_name
from ._processes import warn
from .api import Run, Workspace, workspace
from .errors import InvalidInput, MlopsError
from .store import (
    DATA_ERRORS,
    ENV_JOB_DIR,
    ENV_OUTPUTS_DIR,
    ENV_RUN_ID,
    UNWRITTEN_FILE,
    new_run_id,
)

__all__ = [
    "current_run",
    "dataset",
    "flush",
    "log",
    "log_image",
    "log_params",
    "outputs_dir",
    "should_stop",
    "start_run",
]

FLUSH_INTERVAL = 0.1  # seconds; the issue asks for at most 200 ms between flushes
MAX_KEY_LENGTH = 250
MAX_BATCH = 50_000
MAX_STEP = 2**63 - 1  # the step column is a signed 64-bit integer
CLOSE_ATTEMPTS = 4  # tries to store the last points when a run ends (disk full, locked)


class NoActiveRun(MlopsError):
    """Logging was called outside any run."""


class _Unwritten(Exception):
    """A batch stopped part-way for a reason other than its data; ``rest`` is not stored."""

    def __init__(self, rest: list[tuple[str, int, float, float]]):
        super().__init__(len(rest))
        self.rest = rest


def _check_key(key: object, what: str = "metric name") -> str:
    if not isinstance(key, str):
        raise InvalidInput(f"{what} must be a string, got {type(key).__name__} {key!r}")
    if not key.strip():
        raise InvalidInput(f"{what} must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"{what} {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_LENGTH}"
        )
    if any(ord(c) < 32 for c in key):
        raise InvalidInput(f"{what} {key!r} contains control characters")
    return key


def _elements(value: object) -> int | None:
    """How many numbers an array-like holds: ``size`` is an attribute in NumPy and a method
    in PyTorch (``numel()``); TensorFlow tensors have a ``shape`` only."""
    numel = getattr(value, "numel", None)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", None)
    if isinstance(size, int):
        return size
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            return int(math.prod(int(d) for d in shape))
        except (TypeError, ValueError):
            return None
    return None


def _as_float(key: str, value: object) -> float:
    """Accept Python and NumPy numbers and one-element tensors (NumPy, PyTorch, TensorFlow);
    refuse anything else. A tensor costs one ``.item()`` (one device sync), no more."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not isinstance(value, (str, bytes)) and _elements(value) == 1:
            item = getattr(value, "item", None)  # numpy arrays and scalars, torch tensors
            if not callable(item):  # a TensorFlow tensor: .numpy() gives a NumPy value
                to_numpy = getattr(value, "numpy", None)
                item = (lambda: to_numpy().item()) if callable(to_numpy) else None
            if item is not None:
                with contextlib.suppress(TypeError, ValueError):
                    value = item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidInput(
                f"metric {key!r} must be a real number, got {type(value).__name__} "
                f"{value!r:.60}; convert it first, e.g. float(...)"
            )
    return float(value)


class MetricWriter:
    """Buffers metric points of one run and writes them in batches from a thread."""

    def __init__(self, ws: Workspace, run_id: str, heartbeat: bool = False):
        self.ws = ws
        self.run_id = run_id
        self._queue: deque[tuple[str, int, float, float]] = deque()
        self._next_step = {k: s + 1 for k, s in ws.store.last_metric_steps(run_id).items()}
        self._keys: set[str] = set()
        self._heartbeat = heartbeat
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._failure: str | None = None
        self._step_lock = threading.Lock()  # automatic steps stay unique across threads
        self.dropped: list[str] = []  # points the database refused, described
        self.unwritten = 0  # points still queued when the writer gave up at close
        self.unwritten_reason = ""
        self._thread = threading.Thread(
            target=self._loop, name=f"mlops-writer-{run_id}", daemon=True
        )
        self._thread.start()

    def log(self, key: str, value: Any, step: int | None = None) -> None:
        # The hot path: exact-type checks first, the general ones only when they fail.
        if key not in self._keys:
            self._keys.add(_check_key(key))
        if type(value) is not float:
            value = self._float(key, value)
        if step is None:
            with self._step_lock:
                step = self._next_step.get(key, 0)
                if step > MAX_STEP:
                    raise InvalidInput(
                        f"metric {key!r} has reached step {MAX_STEP} (the 64-bit limit): the "
                        "next automatic step does not exist; pass step= explicitly")
                self._next_step[key] = step + 1
        else:
            if type(step) is not int or not -0x8000000000000000 <= step <= 0x7FFFFFFFFFFFFFFF:
                step = self._step(key, step)
            self._next_step[key] = step + 1
        self._queue.append((key, step, value, time.time()))

    @staticmethod
    def _float(key: str, value: Any) -> float:
        try:
            return float(value) if type(value) is int else _as_float(key, value)
        except OverflowError:  # an int beyond 1e308 would fail later, in the writer thread
            raise InvalidInput(
                f"metric {key!r} is an integer of {value.bit_length()} bits, too large for a float"
            ) from None

    @staticmethod
    def _step(key: str, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise InvalidInput(f"step of {key!r} must be an integer, got {step!r}")
        step = int(step)
        if not -(2**63) <= step < 2**63:  # the database column is a 64-bit integer
            raise InvalidInput(f"step of {key!r} is out of the 64-bit range: {step}")
        return step

    def flush(self) -> None:
        """Write everything logged so far; returns once it is durable.

        Raises a ``WorkspaceError`` when the store cannot take the points now (disk full,
        read-only, locked): they stay queued, in order, for the next try.
        """
        with self._flush_lock:  # one consumer at a time: the pops below never find it empty
            queue = self._queue
            while queue:
                # Pop up to MAX_BATCH points at C speed (log() may append meanwhile).
                batch = list(islice(iter(queue.popleft, None), min(len(queue), MAX_BATCH)))
                try:
                    self._write(batch)
                except _Unwritten as stopped:
                    queue.extendleft(reversed(stopped.rest))  # keep them for the next try
                    raise stopped.__cause__ from None
                except BaseException:
                    queue.extendleft(reversed(batch))
                    raise

    def _write(self, batch: list[tuple[str, int, float, float]]) -> None:
        """Store ``batch``; when the database refuses it for a data reason, halve it until
        only the bad points are left and drop those, with a warning naming each."""
        pending = [batch]  # segments still to write, the next one last
        while pending:
            segment = pending.pop()
            try:
                self.ws.store.log_metrics(self.run_id, segment)
            except DATA_ERRORS as exc:
                if len(segment) == 1:
                    self._drop(segment[0], exc)
                else:
                    half = len(segment) // 2
                    pending += [segment[half:], segment[:half]]
            except BaseException as exc:
                rest = segment + [p for part in reversed(pending) for p in part]
                raise _Unwritten(rest) from exc

    def _drop(self, point: tuple[str, int, float, float], exc: BaseException) -> None:
        key, step, value, _ = point
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        described = f"{key!r} step {step} value {value!r} ({reason})"
        self.dropped.append(described)
        sys.__stderr__.write(f"jupyter-mlops: run {self.run_id}: the database refused metric "
                             f"point {described}; it was dropped, the points after it kept\n")

    def _loop(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            try:
                self.flush()
                if self._heartbeat and time.time() - last_beat > self.ws.config.heartbeat_interval:
                    self.ws.store.heartbeat(self.run_id)
                    last_beat = time.time()
                self._failure = None
            except Exception as exc:  # the database is away: keep the points, retry
                if self._failure is None:
                    warn(f"jupyter-mlops: cannot write metrics yet ({exc})")
                self._failure = str(exc)
                self._stop.wait(1.0)

    def close(self) -> None:
        """Stop the thread and store what is left, trying a few times; what still cannot be
        stored is counted in ``unwritten`` (see ``problem``), never silently lost."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        for attempt in range(CLOSE_ATTEMPTS):
            try:
                self.flush()
                self.unwritten, self.unwritten_reason = 0, ""
                return
            except Exception as exc:
                self.unwritten, self.unwritten_reason = len(self._queue), str(exc)
                if attempt + 1 < CLOSE_ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))

    def problem(self) -> str | None:
        """Why some logged points are not in the store, in words; None when all are."""
        parts = []
        if self.unwritten:
            parts.append(f"{self.unwritten} logged metric points could not be stored: "
                         f"{self.unwritten_reason}")
        if self.dropped:
            shown = "; ".join(self.dropped[:3]) + (" ..." if len(self.dropped) > 3 else "")
            parts.append(f"{len(self.dropped)} logged metric points were refused by the "
                         f"database and dropped: {shown}")
        return "\n".join(parts) or None


class _Active:
    """A run this process logs to, with its writer and outputs folder."""

    def __init__(self, ws: Workspace, run_id: str, outputs: Path, owned: bool):
        self.run = Run(ws, run_id)
        self.outputs = outputs
        self.owned = owned  # True for start_run: this process also ends the run
        self.writer = MetricWriter(ws, run_id, heartbeat=owned)
        self._stop_checked = 0.0
        self._stop = False
        self.environment: threading.Thread | None = None


# The start_run blocks of the current thread (or task), innermost last; immutable tuples.
_stack: contextvars.ContextVar[tuple[_Active, ...]] = contextvars.ContextVar(
    "jupyter_mlops_runs", default=())
_open: list[_Active] = []  # every start_run block open in this process, oldest first
_attached: _Active | None = None
_lock = threading.RLock()


def _job_run() -> _Active | None:
    """The run this process was started for (by a job), attached on first use."""
    global _attached
    run_id = os.environ.get(ENV_RUN_ID)
    if not run_id:
        return None
    with _lock:
        if _attached is None or _attached.run.id != run_id:
            ws = workspace()
            outputs = Path(os.environ.get(ENV_OUTPUTS_DIR) or staging_dir(ws, run_id))
            outputs.mkdir(parents=True, exist_ok=True)
            _attached = _Active(ws, run_id, outputs, owned=False)
            _flush_after_each_cell()
        return _attached


def _active() -> _Active:
    stack = _stack.get()
    if stack:
        return stack[-1]
    if _open:
        return _open[-1]
    found = _job_run()
    if found is None:
        raise NoActiveRun(
            "no active run: call this inside a %%train cell, a notebook started with "
            "`jupyter mlops run`, or a `with mlops.start_run(...):` block"
        )
    return found


def staging_dir(ws: Workspace, run_id: str) -> Path:
    """Local folder where a run's outputs wait before they are stored as artifacts."""
    return ws.backend.staging_dir(run_id) / "outputs"


def current_run() -> Run | None:
    """The run this code logs to, or None outside any run."""
    stack = _stack.get()
    if stack:
        return stack[-1].run
    if _open:
        return _open[-1].run
    found = _job_run()
    return found.run if found else None


def log(key: str, value: float, step: int | None = None) -> None:
    """Log a scalar metric. ``step`` defaults to the key's previous step + 1 (from 0).

    NaN and ±inf are kept as such. Costs about a microsecond: the point is written to the
    store by a background thread within ``FLUSH_INTERVAL``.
    """
    stack = _stack.get()
    (stack[-1] if stack else _active()).writer.log(key, value, step)


def flush() -> None:
    """Make every point logged so far durable in the store."""
    for active in [*_open, _attached]:
        if active is not None:
            active.writer.flush()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def log_params(params: dict[str, Any]) -> None:
    """Record hyperparameters (merged into the run's params; later values win)."""
    if not isinstance(params, dict):
        raise InvalidInput(f"log_params takes a dict, got {type(params).__name__}")
    clean = {_check_key(k, "parameter name"): _jsonable(v) for k, v in params.items()}
    active = _active()
    active.run.workspace.store.merge_run_json(active.run.id, "params", clean)


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):  # matplotlib Figure
        image.savefig(buffer, format="png", bbox_inches="tight")
    elif hasattr(image, "save") and hasattr(image, "mode"):  # PIL Image
        image.save(buffer, format="PNG")
    elif hasattr(image, "shape") and hasattr(image, "dtype"):  # NumPy array (H, W[, C])
        import matplotlib.image

        matplotlib.image.imsave(buffer, image, format="png")
    else:
        raise InvalidInput(
            f"log_image takes a matplotlib figure, a PIL image or a NumPy array, "
            f"got {type(image).__name__}"
        )
    return buffer.getvalue()


def log_image(name: str, image: Any, step: int | None = None) -> str:
    """Store an image as a PNG artifact under ``images/``; returns its artifact path."""
    _check_key(name, "image name")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = f"images/{safe}.png" if step is None else f"images/{safe}/step_{int(step):06d}.png"
    active = _active()
    ws = active.run.workspace
    size, digest = ws.artifacts.put_bytes(active.run.id, path, _png_bytes(image))
    ws.store.record_artifact(active.run.id, path, size, digest)
    return path


def outputs_dir() -> Path:
    """Folder whose files become the run's artifacts when it ends (whatever the ending)."""
    return _active().outputs


def should_stop() -> bool:
    """True once the run was asked to stop (canceled, or pruned by a sweep's policy).

    Checks the store at most once a second, so it is cheap to call every step.
    """
    active = _active()
    now = time.monotonic()
    if not active._stop and now - active._stop_checked > 1.0:
        active._stop_checked = now
        active._stop = active.run.workspace.store.cancel_requested(active.run.id)
    return active._stop


class start_run:
    """Track the work inside a ``with`` block as a run of this process.

    The run ends ``completed``, or ``failed`` with the traceback if the block raises; in
    both cases the metrics and outputs so far are kept and the run stops being current, so
    an exception never leaves a stale "active run" behind.
    """

    def __init__(
        self,
        name: str | None = None,
        experiment: str = "Default",
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
    ):
        self.name = check_name(name, "run name") if name is not None else None
        self.experiment = check_name(experiment, "experiment name")
        self.params = {k: _jsonable(v) for k, v in (params or {}).items()}
        self.tags = {k: _jsonable(v) for k, v in (tags or {}).items()}
        self._active: _Active | None = None

    def __enter__(self) -> Run:
        from ._environment import capture_environment

        ws = workspace()
        run_id = new_run_id()
        parent = current_run()
        ws.store.create_run(
            run_id,
            self.name or f"run-{run_id[:6]}",
            self.experiment,
            status="running",
            kind="inline",
            params=self.params,
            tags=self.tags,
            started_at=time.time(),
            heartbeat_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            parent_id=parent.id if parent else None,
        )
        outputs = staging_dir(ws, run_id)
        outputs.mkdir(parents=True, exist_ok=True)
        self._active = _Active(ws, run_id, outputs, owned=True)
        # Listing installed packages takes ~0.2 s: do it beside the user's code, not before.
        def record_environment() -> None:
            try:
                ws.store.update_run(run_id, environment=capture_environment())
            except MlopsError as exc:  # e.g. a full disk: the run goes on without it
                sys.stderr.write(f"jupyter-mlops: run {run_id}: environment not recorded: "
                                 f"{exc}\n")

        self._active.environment = threading.Thread(
            target=record_environment,
            name="mlops-environment",
            daemon=True,
        )
        self._active.environment.start()
        with _lock:
            _open.append(self._active)
        _stack.set((*_stack.get(), self._active))
        return self._active.run

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        active = self._active
        assert active is not None
        with _lock:
            if active in _open:
                _open.remove(active)
        _stack.set(tuple(a for a in _stack.get() if a is not active))
        _end_run(active, None if exc is None else "".join(traceback.format_exception(exc)))


def _end_run(active: _Active, error: str | None) -> None:
    """Store the run's last points and files, then its ending: ``completed`` only when every
    point ``log()`` accepted is stored; otherwise ``failed``, saying how many were not and
    why. If even the ending cannot be written, a typed error says so; the run then stays
    active in the store and the reaper calls it lost once this process is gone."""
    ws, run_id = active.run.workspace, active.run.id
    failure: Exception | None = None
    try:
        active.writer.close()
        problem = active.writer.problem()
        if problem:
            sys.stderr.write(f"jupyter-mlops: run {run_id}: {problem}\n")
            error = f"{error}\n{problem}" if error else problem
        ws.backend.store_outputs(run_id, active.outputs)
        if active.environment is not None:
            active.environment.join(timeout=30)
        shutil.rmtree(ws.backend.staging_dir(run_id), ignore_errors=True)
    except Exception as exc:
        failure = exc
        error = f"{error}\nending the run failed: {exc}" if error else (
            f"ending the run failed: {exc}")
    try:
        if error is None:
            ws.store.set_status(run_id, "completed")
        else:
            ws.store.set_status(run_id, "failed", error=error)
    except MlopsError as exc:
        raise type(exc)(f"run {run_id} could not be recorded as ended "
                        f"({(error or 'completed').strip().splitlines()[-1]}): {exc}") from None
    if failure is not None:
        raise failure


_cell_hook_installed = False


def _flush_quietly(*_: Any) -> None:
    """After a cell: make its points durable, or say in one line why they wait (the writer
    keeps them and retries; the run cannot end completed without them)."""
    try:
        flush()
    except MlopsError as exc:
        sys.stderr.write(f"jupyter-mlops: metric points not stored yet: {exc}\n")


def _flush_after_each_cell() -> None:
    """In a notebook kernel, make a cell's metrics durable when the cell finishes."""
    global _cell_hook_installed
    if _cell_hook_installed:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.events.register("post_run_cell", _flush_quietly)
        _cell_hook_installed = True


@atexit.register
def _at_exit() -> None:
    for active in reversed(list(_open)):
        try:
            _end_run(active, "the process exited inside the run")
        except Exception as exc:
            warn(f"jupyter-mlops: run {active.run.id} not ended: {exc}")
    if _attached is not None:
        _close_attached(_attached)


def _close_attached(active: _Active) -> None:
    """End of a job's kernel: store the last points; what cannot be stored is reported in
    the job's folder, where the runner reads it before deciding the run's ending."""
    active.writer.close()
    problem = active.writer.problem()
    folder = os.environ.get(ENV_JOB_DIR)
    if problem and folder:
        Path(folder, UNWRITTEN_FILE).write_text(json.dumps({"problem": problem}))


def dataset(name: str) -> Path:
    """The local path of a dataset, for the code of a run.

    In a run started with ``--dataset pets:2``, ``mlops.dataset("pets")`` is that version's
    path. Otherwise ``name`` (``"pets"`` or ``"pets:2"``) is looked up in the registry and,
    inside a run, recorded as one of its inputs.
    """
    from .registry import ENV_DATASETS, DatasetRegistry

    if not isinstance(name, str) or not name:
        raise InvalidInput(f"mlops.dataset takes a dataset name such as 'pets', got {name!r}")
    given = json.loads(os.environ.get(ENV_DATASETS) or "{}")
    base, _, version = name.partition(":")
    entry = given.get(base)
    if entry is not None and version in ("", "latest", str(entry["version"])):
        return Path(entry["path"])
    registry = DatasetRegistry(workspace().backend)
    found = registry.get(name)
    path = found.path
    run = current_run()
    if run is not None:
        registry.record_input(run.id, found)
    return path
