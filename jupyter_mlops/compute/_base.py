"""The target interface: where and when a run's job process runs, and what it holds.

A target is the one thing that differs between "run it on this machine" and "run it on a
cluster". Callers (submission, the job runner, ``runs cancel``, views of the queue) talk to
``Target`` only, so a Ray target can be added later as an entry point without changing them.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from traitlets.config import Configurable

from ..errors import MlopsError

if TYPE_CHECKING:
    from ..store import Backend

__all__ = ["Claim", "ClaimCanceled", "Slot", "SlotState", "Target"]


@dataclass(frozen=True)
class Slot:
    """One unit of compute a job can hold: a GPU, or a CPU slot on a machine without GPUs."""

    kind: str  # "gpu" | "cpu"
    id: str  # the device id for CUDA_VISIBLE_DEVICES ("0", or a "GPU-<uuid>"), or "0", "1"...

    @property
    def name(self) -> str:
        """``"gpu:0"``: how a slot is shown, stored in a run's ``resources`` and locked."""
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class SlotState:
    """A slot and who holds it right now."""

    slot: Slot
    held: bool
    run_id: str | None = None  # None when free, or held by a process no active run records


class ClaimCanceled(MlopsError):
    """A run stopped waiting for slots: it was canceled, or left ``queued`` some other way."""


class Claim:
    """Slots held by the current process for one run.

    The slots stay held until ``release()`` or until this process ends: the locks belong to
    the process, so the OS frees them when it dies however it dies. A Claim dropped without
    ``release()`` therefore keeps its slots to the end of the process, on purpose: a job
    process must never give up its GPU while its kernel may still be using it.
    """

    def __init__(self, run_id: str, slots: list[Slot], fds: list[int] | None = None):
        self.run_id = run_id
        self.slots = list(slots)
        self._fds = list(fds or [])

    @property
    def cuda_visible_devices(self) -> str:
        """The claimed GPU ids, comma-joined; ``""`` (no GPU visible) for CPU-only jobs."""
        return ",".join(s.id for s in self.slots if s.kind == "gpu")

    def env(self) -> dict[str, str]:
        """Environment variables for the job's kernel, so it sees only what it claimed."""
        env = {"CUDA_VISIBLE_DEVICES": self.cuda_visible_devices}
        if env["CUDA_VISIBLE_DEVICES"]:
            # CUDA numbers devices fastest-first by default, nvidia-smi by PCI bus: without
            # this, "CUDA_VISIBLE_DEVICES=1" can select a GPU another job claimed as "0".
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    @property
    def released(self) -> bool:
        return not self._fds

    def release(self) -> None:
        """Give the slots back (closing a lock's descriptor drops its lock). Idempotent."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.slots) or "no slot"
        state = " released" if self.released and self.slots else ""
        return f"<Claim {self.run_id}: {names}{state}>"


class _TargetMeta(type(Configurable), ABCMeta):  # type: ignore[misc]
    # Targets are configurable (traitlets) *and* abstract; the two metaclasses must be merged.
    pass


class Target(Configurable, metaclass=_TargetMeta):
    """Where and when runs execute.

    Contract, for every target:

    - ``validate(gpus)`` runs before a run is recorded, so an impossible request fails at
      submission with a clear ``InvalidInput`` rather than waiting forever in the queue.
    - ``submit(backend, run_id, gpus)`` starts the job process of a run already recorded
      ``queued`` and returns without waiting for it; the job then reports everything
      through the store.
    - ``claim(backend, run_id, gpus)`` is called *by the job process* before it starts the kernel:
      it blocks while the run waits its turn (the run stays ``queued``) and returns the slots
      it may use. A target whose scheduler already placed the job returns at once.
    - ``cancel(backend, run_id)`` asks a run to stop and makes sure it does; it does not
      block unless asked to.
    - ``slots(backend)`` lists the target's slots and which run holds each.
    """

    name: str = ""

    @abstractmethod
    def validate(self, gpus: int) -> None:
        """Raise ``InvalidInput`` if no run of this target could ever get ``gpus`` GPUs."""

    @abstractmethod
    def submit(self, backend: Backend, run_id: str, gpus: int = 0) -> None:
        """Start the job process for the ``queued`` run ``run_id`` (which asks ``gpus``)."""

    @abstractmethod
    def claim(self, backend: Backend, run_id: str, gpus: int, poll: float = 0.2) -> Claim:
        """Block until ``run_id`` may start; hold and return its slots."""

    @abstractmethod
    def cancel(self, backend: Backend, run_id: str, *, wait: bool = False) -> None:
        """Request that the run stops, and enforce it if its job does not comply.

        Returns at once unless ``wait``: a short-lived caller (the CLI) passes ``wait=True``
        so that the enforcement is not cut short when it exits.
        """

    @abstractmethod
    def slots(self, backend: Backend | None = None) -> list[SlotState]:
        """Every slot of the target and the run holding it, if any."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

