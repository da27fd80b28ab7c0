"""The ``local`` target: detached job processes on this machine, one per free slot.

Slots are the machine's GPUs (``nvidia-smi -L``, or a configured list) or, without any GPU,
a configured number of CPU slots. A job holds its slots as ``flock`` locks on files in the
workspace directory. We chose file locks over rows in the database because the OS releases
them when the holding process dies, by any death including ``kill -9`` and out-of-memory,
so a crashed job can never leak a slot and nothing has to clean up after it.

The waiting line is the ``queued`` runs of the target in creation order (first in, first out,
strictly: a run at the head that needs two GPUs keeps later one-GPU runs waiting, so big jobs
are not starved by small ones).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, Int, List, Unicode, default

from .._processes import kill_tree, spawn_detached, started_before, warn
from ..errors import InvalidInput, NotFound
from ..store import ACTIVE, HOSTNAME, job_gone
from ._base import Claim, ClaimCanceled, Slot, SlotState, Target

if TYPE_CHECKING:
    from ..store import Backend

__all__ = ["ENV_AGENT_IDLE", "ENV_CPU_SLOTS", "ENV_GPUS", "ENV_PRELOAD", "ENV_WARM",
           "LocalTarget", "detect_gpus"]

ENV_GPUS = "JUPYTER_MLOPS_GPUS"  # "0,1": the GPU inventory; "" : no GPU (skips nvidia-smi)
ENV_CPU_SLOTS = "JUPYTER_MLOPS_CPU_SLOTS"
ENV_WARM = "JUPYTER_MLOPS_WARM"  # "0": every run starts cold, no per-host agent
ENV_PRELOAD = "JUPYTER_MLOPS_PRELOAD"  # "numpy,torch": modules warm kernels import
ENV_AGENT_IDLE = "JUPYTER_MLOPS_AGENT_IDLE"  # seconds

_said_cold: set[str] = set()  # why runs of this process started cold, each said once

SLOT_PROBE = 0.02  # seconds between two looks at the slot locks while a run waits

_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):")  # "GPU 0: NVIDIA A100 (UUID: GPU-...)"


def detect_gpus(timeout: float = 10.0) -> list[str]:
    """GPU indices listed by ``nvidia-smi -L``; none if it is missing or fails.

    MIG instances (indented "MIG ..." lines) are not separate slots: their parent GPU is.
    """
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:  # e.g. installed but no driver loaded: no usable GPU
        return []
    return [m.group(1) for line in out.stdout.splitlines() if (m := _NVIDIA_SMI_LINE.match(line))]


class LocalTarget(Target):
    """Runs jobs as detached processes on this machine, one per free slot.

    Configure in ``jupyter_mlops_config.py``::

        c.LocalTarget.gpus = ["0", "1"]   # instead of asking nvidia-smi
        c.LocalTarget.cpu_slots = 4       # concurrent jobs on a machine without GPUs
        c.LocalTarget.warm = False        # every run cold (default: warm, compute/agent/)
        c.LocalTarget.preload = ["numpy", "torch"]  # what warm kernels import beforehand
    """

    name = "local"

    gpus = List(
        Unicode(), default_value=None, allow_none=True, config=True,
        help="GPU ids to hand out (CUDA_VISIBLE_DEVICES values). None: the "
        f"{ENV_GPUS} variable if set, else what `nvidia-smi -L` lists.",
    )
    cpu_slots = Int(
        config=True,
        help=f"Jobs that may run at once on a machine without GPUs (default: {ENV_CPU_SLOTS} "
        "or 1).",
    )
    cancel_grace = Float(
        30.0, config=True,
        help="Seconds a canceled job gets to stop by itself (its runner interrupts, then "
        "kills the kernel and stores the files) before its process tree is killed.",
    )

    warm = Bool(
        config=True,
        help="Start runs through this host's agent, from job processes and kernels started "
        f"ahead of time (default: on, unless {ENV_WARM}=0; off: every run starts cold, and "
        "no agent or process outlives the submitter's own).",
    )
    preload = List(
        Unicode(), config=True,
        help="Modules warm kernels import before they are given a run, e.g. "
        f'["numpy", "torch"] (default: {ENV_PRELOAD}, comma-separated). Importing torch '
        "creates no CUDA context.",
    )
    agent_idle = Float(
        config=True,
        help="Seconds the agent stays without active runs or submissions before it exits "
        f"(default: {ENV_AGENT_IDLE} or 600).",
    )
    fork = Bool(
        True, config=True,
        help="With warm starts, fork warm job processes and their kernels from one process "
        "whose imports are done (about 0.1 s of CPU each instead of two new interpreters). "
        "Off: each warm process is a new interpreter.",
    )
    warm_kernels = Int(
        None, allow_none=True, config=True,
        help="Warm job processes (each with its kernel) the agent keeps ready for each GPU, "
        "or in all on a machine without GPUs; default: one per slot. Each costs a Python "
        "process and a kernel, booted while runs run.",
    )

    @default("warm")
    def _warm_default(self) -> bool:
        return os.environ.get(ENV_WARM, "").strip().lower() not in ("0", "false", "no", "off")

    @default("preload")
    def _preload_default(self) -> list[str]:
        return [m.strip() for m in os.environ.get(ENV_PRELOAD, "").split(",") if m.strip()]

    @default("agent_idle")
    def _agent_idle_default(self) -> float:
        raw = os.environ.get(ENV_AGENT_IDLE, "").strip()
        try:
            return float(raw) if raw else 600.0
        except ValueError:
            raise InvalidInput(f"{ENV_AGENT_IDLE} must be a number of seconds, got {raw!r}"
                               ) from None

    def preload_modules(self) -> list[str]:
        """What a warm kernel imports: ``preload``, then this package's in-run API and the
        job notebook's helpers (every job kernel imports them: 1 s or more, off the run's
        time when done ahead)."""
        return [*dict.fromkeys([*self.preload, "jupyter_mlops.tracking",
                                "jupyter_mlops.jobs._cell"])]

    @default("cpu_slots")
    def _cpu_slots_default(self) -> int:
        raw = os.environ.get(ENV_CPU_SLOTS, "").strip()
        if not raw:
            return 1
        try:
            return int(raw)
        except ValueError:
            raise InvalidInput(
                f"{ENV_CPU_SLOTS} must be a whole number of CPU slots, got {raw!r}"
            ) from None

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._detected: tuple[list[str], str] | None = None

    # -- inventory ------------------------------------------------------------------------

    def _gpu_inventory(self) -> tuple[list[str], str]:
        """The GPU ids and where they came from (for error messages). Detected once."""
        if self.gpus is not None:
            return [g.strip() for g in self.gpus if g.strip()], "LocalTarget.gpus"
        if self._detected is None:
            raw = os.environ.get(ENV_GPUS)
            if raw is not None:
                ids = [g.strip() for g in raw.split(",") if g.strip()]
                self._detected = ids, ENV_GPUS
            else:
                self._detected = detect_gpus(), "nvidia-smi -L"
        return self._detected

    def gpu_ids(self) -> list[str]:
        """The GPUs this target hands out, e.g. ``["0", "1"]``."""
        return list(self._gpu_inventory()[0])

    def inventory(self) -> list[Slot]:
        """Every slot: one per GPU, or ``cpu_slots`` CPU slots when there is no GPU."""
        ids = self.gpu_ids()
        if ids:
            return [Slot("gpu", i) for i in ids]
        if self.cpu_slots < 1:
            raise InvalidInput(
                f"LocalTarget.cpu_slots must be at least 1, got {self.cpu_slots}"
            )
        return [Slot("cpu", str(i)) for i in range(self.cpu_slots)]

    def validate(self, gpus: int) -> None:
        if isinstance(gpus, bool) or not isinstance(gpus, int):
            raise InvalidInput(f"--gpus must be a whole number, got {gpus!r}")
        if gpus < 0:
            raise InvalidInput(f"--gpus must be 0 or more, got {gpus}")
        if gpus == 0:
            return
        ids, source = self._gpu_inventory()
        if not ids:
            why = {
                "nvidia-smi -L": "found none with nvidia-smi -L",
                ENV_GPUS: f"{ENV_GPUS} is set and empty",
                "LocalTarget.gpus": "LocalTarget.gpus is configured empty",
            }[source]
            raise InvalidInput(
                f"--gpus {gpus} needs GPUs, but target {self.name!r} has no GPUs ({why}; "
                f"configure LocalTarget.gpus or {ENV_GPUS}); use --gpus 0 to run on a CPU slot"
            )
        if gpus > len(ids):
            names = ", ".join(f"gpu:{i}" for i in ids)
            raise InvalidInput(
                f"--gpus {gpus} asks for more GPUs than target {self.name!r} has "
                f"({len(ids)}: {names})"
            )

    def _wanted(self, gpus: int) -> tuple[list[Slot], int]:
        """The slots a request may take, and how many it needs."""
        slots = self.inventory()
        if slots[0].kind == "gpu":
            # gpus=0 on a GPU machine needs no slot: it runs at once with no GPU visible.
            # Making it wait for a GPU it will not use would idle the GPU queue for nothing.
            return slots, gpus
        return slots, 1  # CPU machine: every job (validate() allowed only gpus=0) takes one

    # -- slot locks -----------------------------------------------------------------------

    def lock_dir(self, backend: Backend) -> Path:
        return backend.location.directory / "slots" / self.name

    def _try_take(self, folder: Path, candidates: list[Slot], count: int
                  ) -> list[tuple[Slot, int]] | None:
        """Lock ``count`` free slots without waiting, or none at all."""
        folder.mkdir(parents=True, exist_ok=True)
        taken: list[tuple[Slot, int]] = []
        for slot in candidates:
            if len(taken) == count:
                break
            # os.open descriptors are not inherited by children (PEP 446), so a kernel
            # outliving its job process cannot keep the slot locked by accident.
            fd = os.open(folder / f"{slot.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append((slot, fd))
        if len(taken) < count:
            for _, fd in taken:
                os.close(fd)
            return None
        return taken

    @staticmethod
    def _is_locked(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False  # never claimed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing also drops the probe's lock at once
        return False

    def slots(self, backend: Backend) -> list[SlotState]:
        holders: dict[str, str] = {}
        for row in backend.store.list_runs(status=ACTIVE):
            if row["target"] != self.name or row["host"] not in (None, HOSTNAME):
                continue
            for name in (row["resources"] or {}).get("slots", []):
                holders.setdefault(name, row["id"])  # newest first: a slot's current holder
        folder = self.lock_dir(backend)
        states = []
        for slot in self.inventory():
            held = self._is_locked(folder / f"{slot.name}.lock")
            states.append(SlotState(slot, held, holders.get(slot.name) if held else None))
        return states

    # -- the queue ------------------------------------------------------------------------

    def _first_in_line(self, backend: Backend, me: dict[str, Any]) -> bool:
        """True if no older run of this target on this machine is still waiting.

        Older queued runs whose job is gone are marked ``lost`` on the way, so a crash
        can never block the line for good.
        """
        mine = (me["created_at"], me["id"])
        for row in backend.store.list_runs(status="queued"):
            if row["id"] == me["id"] or row["target"] != self.name:
                continue
            if (row["created_at"], row["id"]) >= mine:
                continue
            if row["host"] not in (None, HOSTNAME):
                continue  # another machine's local queue (a shared database)
            reason = job_gone(row, backend.config.lost_after, backend.store.clock())
            if reason is None:
                return False
            backend.store.set_status(row["id"], "lost", only_from=("queued",), error=reason)
        return True

    def claim(self, backend: Backend, run_id: str, gpus: int, poll: float = 0.2) -> Claim:
        """Block until ``run_id`` may start, then hold its slots in this process.

        Call it from the job process, while the run is ``queued``; move the run on to
        ``starting`` right after, which lets the next run in line go ahead. Raises
        ``ClaimCanceled`` if the run is canceled (or leaves ``queued``) while waiting.

        On a GPU machine ``gpus=0`` takes no slot and does not queue: the job runs at once
        with ``CUDA_VISIBLE_DEVICES=""``. On a machine without GPUs every job takes one CPU
        slot.
        """
        self.validate(gpus)
        candidates, count = self._wanted(gpus)
        store = backend.store
        # Register this process as the run's job: others then see it alive (heartbeat) or
        # dead (pid), and never wait behind it after it is gone.
        store.update_run(run_id, host=HOSTNAME, pid=os.getpid(), heartbeat_at=time.time())
        last_beat = time.monotonic()
        folder = self.lock_dir(backend)
        while True:
            row = self._waiting_row(backend, run_id)
            if count == 0:
                taken: list[tuple[Slot, int]] | None = []
            elif self._first_in_line(backend, row):
                taken = self._try_take(folder, candidates, count)
            else:
                taken = None
            if taken is not None:
                claim = Claim(run_id, [s for s, _ in taken], [fd for _, fd in taken])
                try:
                    self._waiting_row(backend, run_id)  # canceled while we locked?
                    store.merge_run_json(run_id, "resources", {
                        "slots": [s.name for s in claim.slots],
                        "cuda_visible_devices": claim.cuda_visible_devices,
                    })
                except BaseException:
                    claim.release()
                    raise
                return claim
            if time.monotonic() - last_beat >= backend.config.heartbeat_interval:
                store.heartbeat(run_id)
                last_beat = time.monotonic()
            self._wait_for_slot_change(folder, candidates, poll)

    def _free_slots(self, folder: Path, candidates: list[Slot]) -> frozenset[str]:
        return frozenset(s.name for s in candidates
                         if not self._is_locked(folder / f"{s.name}.lock"))

    def _wait_for_slot_change(self, folder: Path, candidates: list[Slot], poll: float) -> None:
        """Sleep ``poll`` seconds, or less: until a slot is released or taken.

        Checking the queue costs database reads, so it happens every ``poll`` seconds; the
        slot locks are probed more often (a few system calls, no database), so a run waiting
        for a slot starts within ``SLOT_PROBE`` seconds of its release, not up to ``poll``.
        """
        before = self._free_slots(folder, candidates)
        end = time.monotonic() + poll
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(SLOT_PROBE, left))
            if self._free_slots(folder, candidates) != before:
                return

    @staticmethod
    def _waiting_row(backend: Backend, run_id: str) -> dict[str, Any]:
        row = backend.store.get_run_row(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r} in {backend.location.directory}")
        if row["status"] != "queued":
            raise ClaimCanceled(f"run {run_id} is {row['status']}, no longer waiting for a slot")
        if row["cancel_requested_at"]:
            raise ClaimCanceled(f"run {run_id} was canceled while waiting for a slot")
        return row

    # -- job processes --------------------------------------------------------------------

    def submit(self, backend: Backend, run_id: str, gpus: int = 0) -> None:
        """Start the run's job process detached (its own session), so it outlives us.

        With ``warm``, this host's agent starts it from a warm process (the agent is
        started on demand); if the agent cannot be reached, the run starts cold as usual.
        """
        row = backend.store.get_run_row(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r} in {backend.location.directory}")
        if row["status"] != "queued":
            raise InvalidInput(f"run {run_id} is {row['status']}; only a queued run is submitted")
        if self.warm:
            from .agent import AgentUnavailable, hand_off

            try:
                hand_off(backend, run_id, gpus)
                return
            except AgentUnavailable as exc:
                reason = str(exc).replace(run_id, "<run>")
                if reason not in _said_cold:  # once per reason: warm starts are the default
                    _said_cold.add(reason)
                    warn(f"jupyter-mlops: starting run {run_id} cold: {exc} (said once; "
                         f"{ENV_WARM}=0 turns warm starts off)")
        folder = backend.staging_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        process = spawn_detached(
            [sys.executable, "-m", "jupyter_mlops.jobs.runner", run_id],
            env={**os.environ, **backend.location.to_env()}, cwd=folder,
            log=folder / "runner.log")
        # The job process is the run's pid from now on: queue checks can tell a slow start
        # from a dead one.
        backend.store.update_run(run_id, host=HOSTNAME, pid=process.pid, heartbeat_at=time.time())

    def cancel(self, backend: Backend, run_id: str, *, wait: bool = False) -> None:
        """Ask the run to stop; kill its job process tree if it has not after the grace.

        A queued run is canceled at once (its waiting job sees it and exits). A running job
        stops itself (its runner interrupts the kernel, then kills it and stores the files);
        only if it is still active after ``cancel_grace`` seconds, and runs on this machine,
        is it killed from here and marked canceled.
        """
        store = backend.store
        if store.set_status(run_id, "canceled", only_from=("queued",), error="canceled"):
            return
        store.request_stop(run_id, "canceled by request")
        row = store.get_run_row(run_id)
        if row is None or row["status"] not in ACTIVE:
            return
        enforcer = threading.Thread(
            target=self._enforce_cancel, args=(backend, run_id), name=f"mlops-cancel-{run_id}",
            daemon=True,
        )
        enforcer.start()
        if wait:
            enforcer.join()

    def _enforce_cancel(self, backend: Backend, run_id: str) -> None:
        store = backend.store
        deadline = time.monotonic() + self.cancel_grace
        while True:
            row = store.get_run_row(run_id)
            if row is None or row["status"] not in ACTIVE:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if row["host"] != HOSTNAME or not row["pid"]:
            return  # not ours to kill: the job's own host must stop it
        if not started_before(row["pid"], row["started_at"] or row["heartbeat_at"]):
            return
        kill_tree(row["pid"])
        store.set_status(
            run_id, "canceled",
            error=f"canceled: the job did not stop within {self.cancel_grace:g} s of the "
            "request, so its processes were killed",
        )

