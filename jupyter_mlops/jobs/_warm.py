"""A warm job process: imports done and a kernel started before it knows its run.

The agent (``jupyter_mlops.compute.agent``) starts it as ``runner --warm`` with the slot's
``CUDA_VISIBLE_DEVICES``; it boots its kernel, imports the preloaded modules into it, does
its own slow set-up (papermill, the environment record, nbformat's validator), says it is
ready, then waits on stdin for one run id. The agent hands runs only to processes that
said they are ready: until a process has read its run it dies with the agent
(parent-death signal, and the end of its stdin), so a run is exposed for the microseconds
of a read only. Once given a run it is an ordinary job process that outlives the agent.
Its kernel serves that one run and is then discarded with it, as a cold kernel is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from .._processes import warn
from ..compute.agent import (
    ENV_AGENT_PID,
    ENV_PRELOAD_CODE,
    ENV_READY_FD,
    set_parent_death_signal,
)

READY_TIMEOUT = 120.0  # a kernel slower than this to boot is broken


class WarmKernel:
    """A started kernel (an ``AsyncKernelManager``) waiting for a run, and what was
    prepared beside it."""

    def __init__(self, km: Any, cuda_visible_devices: str, environment: dict[str, Any]):
        self.km = km
        self.cuda_visible_devices = cuda_visible_devices
        self.environment = environment

    def fits(self, kernel_name: str, slot_env: dict[str, str]) -> bool:
        """True if this kernel may run a job needing ``kernel_name`` on these devices:
        ``CUDA_VISIBLE_DEVICES`` is read once, when CUDA starts, so it cannot be changed."""
        return (kernel_name == self.km.kernel_name
                and slot_env.get("CUDA_VISIBLE_DEVICES", "") == self.cuda_visible_devices
                and self.km.provisioner is not None)

    def prepare(self, env: dict[str, str], cwd: str | None) -> None:
        """Give the kernel the run's environment and working folder, as a cold kernel gets
        them at its start (before any user code runs; not recorded in the notebook).

        The code is run by papermill's own client, as its readiness check (see
        ``_quick_ready_client``): one round trip, no client of our own.
        """
        self.km.mlops_prepare_code = (
            f"import os as _o; _o.environ.update({json.dumps(env)}); "
            + (f"_o.chdir({cwd!r}); " if cwd else "") + "del _o")

    def discard(self) -> None:
        from jupyter_core.utils import run_sync

        run_sync(self.km.shutdown_kernel)(now=True)


class WarmKernelDied(RuntimeError):
    """The warm kernel died (or never answered) before its run began: no user code ran,
    so the run may go on in a new kernel."""


def _quick_ready_client() -> type:
    """An ``AsyncKernelClient`` whose ``wait_for_ready`` ends as soon as the kernel is known
    to answer on both channels, for a kernel already up, and which prepares it for its run
    on the way.

    jupyter_client's version, after the ``kernel_info`` reply, drains IOPub until 0.2 s pass
    without a message: a fixed 0.2 s on every run. Here the proof that IOPub is connected
    is the kernel's own ``idle`` status for that very request; if the subscription joined
    too late to see it, a ``kernel_info`` request is sent again. The first request is the
    run's preparation (``WarmKernel.prepare``: environment and working folder), executed
    silently, out of the kernel's history and numbering, so a run costs one round trip
    before its first cell, not two.
    """
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient

    class QuickReadyClient(AsyncKernelClient):
        async def wait_for_ready(self, timeout: float | None = None) -> None:
            deadline = time.monotonic() + (timeout or READY_TIMEOUT)
            code = getattr(self.parent, "mlops_prepare_code", None)
            while time.monotonic() < deadline:
                if code is not None:
                    msg_id = self.execute(code, silent=True, store_history=False)
                else:
                    msg_id = self.kernel_info()
                try:
                    reply = await self._reply_to(msg_id, deadline)
                    if code is not None:
                        code = None  # prepared: never run twice
                        if reply["content"]["status"] != "ok":
                            content = reply["content"]
                            raise RuntimeError(
                                "preparing the warm kernel for the run failed: "
                                f"{content.get('ename')}: {content.get('evalue')}")
                    while True:
                        msg = await self.iopub_channel.get_msg(timeout=0.5)
                        if (msg["parent_header"].get("msg_id") == msg_id
                                and msg["msg_type"] == "status"
                                and msg["content"].get("execution_state") == "idle"):
                            return
                except Empty:
                    if not await self._async_is_alive():
                        raise WarmKernelDied("the warm kernel died") from None
            raise WarmKernelDied(f"the warm kernel did not answer within {timeout} s")

        async def _reply_to(self, msg_id: str, deadline: float) -> dict[str, Any]:
            """The shell reply to ``msg_id`` (raises ``Empty`` if none comes for 1 s)."""
            while True:
                reply = await self.shell_channel.get_msg(timeout=1.0)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply
                if time.monotonic() > deadline:
                    raise Empty

        async def _async_is_alive(self) -> bool:
            alive = self.parent.is_alive() if self.parent is not None else True
            return bool(await alive) if hasattr(alive, "__await__") else bool(alive)

    return QuickReadyClient


def _run_silently(km: Any, code: str, timeout: float = READY_TIMEOUT) -> None:
    """Execute ``code`` in the kernel, out of its history and numbering; raise if it fails.

    Only the shell channel is used: the reply says how it went, and a request sent while
    the kernel still boots waits in ZeroMQ's queue until the kernel listens (a first
    ``wait_for_ready`` would cost a fixed 0.2 s draining IOPub).
    """
    from queue import Empty

    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient(parent=km)
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    deadline = time.monotonic() + timeout
    try:
        msg_id = kc.execute(code, silent=True, store_history=False)
        while True:
            try:
                reply = kc.get_shell_msg(timeout=1.0)
            except Empty:
                if time.monotonic() > deadline or km.provisioner is None or \
                        km.provisioner.process.poll() is not None:
                    raise RuntimeError("the kernel did not answer (did it die?)") from None
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    finally:
        kc.stop_channels()
    content = reply["content"]
    if content["status"] != "ok":
        raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")


def wait_for_run() -> tuple[str, WarmKernel] | None:
    """Boot and prepare, then block until the agent hands a run id; None if the agent went
    away first (the kernel is shut down)."""
    if not set_parent_death_signal(signal.SIGKILL):
        return None  # without it, a warm process could outlive its agent: never warm here
    if str(os.getppid()) != os.environ.get(ENV_AGENT_PID):
        return None  # the agent died before the signal was armed
    ready_fd = int(os.environ.pop(ENV_READY_FD, "-1"))
    from .._environment import capture_environment
    from . import _forkserver
    from ._execute import _kernel_manager, _start_kernel

    km = _kernel_manager("python3")
    km.client_factory = _quick_ready_client()  # papermill's client, for the run
    seeded = _forkserver.prepare_seeded_kernel(km)  # forked by the fork server: fork it
    _start_kernel(km, None)
    modules = [m for m in os.environ.get(ENV_PRELOAD_CODE, "").split(",") if m]
    started = time.monotonic()
    if not seeded:  # a kernel forked from the fork server has imported them already
        try:
            _run_silently(km, "; ".join(f"import {m}" for m in modules) or "pass")
        except Exception as exc:  # a missing module: the run will say so when it imports it
            warn(f"jupyter-mlops: warm kernel: preloading {modules} failed: {exc}", sys.stdout)
    warm = WarmKernel(km, os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                      _forkserver.environment or capture_environment())
    _warm_papermill()
    print(f"warm job process {os.getpid()} ready in {time.monotonic() - started:.2f} s "
          f"(CUDA_VISIBLE_DEVICES={warm.cuda_visible_devices!r}, preload {modules}"
          f"{', forked' if _forkserver.forked else ''}"
          f"{', kernel forked' if seeded else ''})", flush=True)
    if ready_fd >= 0:  # tell the agent: only now may it hand us a run
        os.write(ready_fd, b"r")
        os.close(ready_fd)
    line = sys.stdin.readline().strip()
    if not line:
        warm.discard()
        return None
    set_parent_death_signal(0)  # ours now: the run must outlive the agent
    return line, warm


def _warm_papermill() -> None:
    """Import papermill and build nbformat's validator now rather than on the run's time."""
    import nbformat
    import papermill  # noqa: F401

    from ._execute import register_engine

    nbformat.validate(nbformat.v4.new_notebook())
    register_engine()
