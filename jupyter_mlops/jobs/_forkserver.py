"""The fork server: warm job processes and their kernels, forked from one warm parent.

A new job process and a new kernel each cost about a CPU-second here, nearly all of it
imports; on two cores that start-up competed with the runs and a sweep of short trials
gained nothing from warm processes. The agent therefore starts one fork server
(``python -m jupyter_mlops.jobs.runner --forkserver``): it imports, once, what a job
process and a kernel import (papermill, jupyter_client, ipykernel with IPython, this
package, the ``preload`` modules) and records the environment, then only forks.

- A warm job process is a fork of the server (milliseconds). First, while it is still
  single-threaded with no event loop, it forks its kernel's *seed*; then it opens the
  workspace and starts the kernel through jupyter_client as usual: the
  ``jupyter-mlops-seeded`` provisioner hands the launch command to the seed, which becomes
  the kernel in-process instead of exec'ing a new interpreter (about 0.1 s of CPU).
- Fresh state: the server never runs user code and keeps no connection (it opens the
  database once, to import and check what opening needs, and closes it), so a fork
  carries imported modules only. Each kernel serves one run and is discarded. What a fork
  would share is reset in the kernel: ``random`` reseeds itself at fork, numpy's global
  generator is reseeded here.
- The server has no threads (it refuses to serve if an import started one) and no event
  loop; its children reset what they inherit (signal dispositions, stdio).
- Lifetimes: the server dies with the agent (parent-death signal, and the end of its
  socket); a warm process waiting for a run dies with the server; once handed a run it
  is on its own, as a cold job process is. The kernel dies with its job process
  (ipykernel watches its parent) and is killed by it at the end of the run.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from jupyter_client.provisioning import LocalProvisioner

from .._processes import warn
from ..compute.agent import (
    ENV_AGENT_PID,
    ENV_PRELOAD_CODE,
    ENV_READY_FD,
    set_parent_death_signal,
    set_process_name,
)
from ..compute.agent._forks import ENV_FORK_SOCKET, PolledProcess

PROVISIONER = "jupyter-mlops-seeded"  # entry point in pyproject.toml
KERNEL_MODULE = "ipykernel_launcher"

environment: dict[str, Any] | None = None  # recorded once by the server, for every run
forked = False  # True in a warm job process the server forked
_pending_seed: KernelSeed | None = None  # the seed the next kernel launch of this process uses


# -- the server -------------------------------------------------------------------------------


def serve() -> int:
    """The fork server's life: import, say "up", then fork a warm job process per request
    until the agent closes the socket."""
    control = socket.socket(fileno=int(os.environ.pop(ENV_FORK_SOCKET)))
    if not set_parent_death_signal(signal.SIGKILL) or \
            str(os.getppid()) != os.environ.get(ENV_AGENT_PID):
        return 0  # the agent is already gone
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked processes are reaped by the OS
    set_process_name("mlops-forksrv")
    started = time.monotonic()
    modules = _import_everything()
    refusal = _unforkable()
    if refusal:
        control.send(f"no: {refusal}".encode())
        print(f"fork server {os.getpid()}: {refusal}; not forking", flush=True)
        return 1
    # Keep the garbage collector off the imported objects in every fork: a collection
    # reads (and so copies) every page they live on, which would undo the fork's sharing.
    gc.collect()
    gc.freeze()
    control.send(b"up")
    print(f"fork server {os.getpid()} up in {time.monotonic() - started:.2f} s "
          f"(preloaded {modules})", flush=True)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, 4096, 3)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not message:
            return 0  # the agent closed its end
        try:
            request = json.loads(message)
            if len(fds) != 3:
                raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
            sys.stdout.flush()  # or a fork would write what is buffered once more
            sys.stderr.flush()
            pid = os.fork()
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": str(exc)}).encode())
            continue
        if pid == 0:
            control.close()
            _child(functools.partial(_warm_job_process, request, *fds))
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"pid": pid}).encode())


def _child(work: Callable[[], int]) -> NoReturn:
    """The end of every fork's child: run ``work`` and exit with its code, never returning
    into the parent's code (a traceback goes to the log, and stdio is flushed first)."""
    code = 1
    try:
        code = work()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _import_everything() -> list[str]:
    """What every job process and kernel would import by itself, and the environment."""
    global environment
    import nbclient  # noqa: F401
    import papermill  # noqa: F401
    import zmq.asyncio  # noqa: F401
    from jupyter_client.asynchronous import AsyncKernelClient  # noqa: F401
    from jupyter_client.blocking import BlockingKernelClient  # noqa: F401
    from jupyter_client.manager import AsyncKernelManager  # noqa: F401
    from jupyter_client.provisioning import KernelProvisionerFactory

    from .._environment import capture_environment
    from . import _execute, _warm  # noqa: F401

    for name in ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
                 "ipykernel.debugger", "ipykernel.kernelspec", "IPython",
                 "IPython.core.completerlib", "tornado.platform.asyncio", "faulthandler",
                 "psutil", "fsspec.implementations.local"):
        importlib.import_module(name)
    from jupyter_client.localinterfaces import localhost

    localhost()  # lists this host's addresses (cached): every kernel start asks for them
    _warm._warm_papermill()
    # Opening the database imports its migrations' machinery (alembic, the dialect): do it
    # once here, and close it before any fork (a database connection must never be shared
    # with a child: SQLite's locks belong to the process). Not the artifact store: a client
    # such as s3fs starts a thread, and a threaded process is not forked.
    from ..store import Store, load_config, resolve_location

    config = load_config()
    Store(resolve_location(None, config), config).close()
    KernelProvisionerFactory.instance()  # reads the provisioners' entry points once
    modules = [m for m in os.environ.get(ENV_PRELOAD_CODE, "").split(",") if m]
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the run will say so itself when it imports it
            warn(f"jupyter-mlops: fork server: preloading {name!r} failed: {exc}", sys.stdout)
    environment = capture_environment()
    return modules


def _unforkable() -> str | None:
    """Why this process must not be forked now, if it must not."""
    if threading.active_count() > 1:  # a fork copies one thread: the others' locks stay held
        return f"an import started threads {[t.name for t in threading.enumerate()]}"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():  # a CUDA context does not survive fork
        return "a preloaded module initialised CUDA"
    return None


def _warm_job_process(request: dict[str, Any], stdin_fd: int, ready_fd: int, log_fd: int
                      ) -> int:
    """In a fork of the server: become ``runner --warm`` for the slot's devices."""
    global forked, _pending_seed
    forked = True
    os.setsid()  # its own session, as a cold job process: it outlives the agent once handed
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    set_process_name("mlops-job")
    os.dup2(stdin_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    for fd in (stdin_fd, log_fd):
        os.close(fd)
    os.environ[ENV_AGENT_PID] = str(os.getppid())  # the parent whose death ends it if unused
    os.environ[ENV_READY_FD] = str(ready_fd)
    os.environ["CUDA_VISIBLE_DEVICES"] = str(request["cuda"])
    if environment is not None:
        environment["cuda_visible_devices"] = str(request["cuda"])
    # The kernel's seed first, while this process has no thread (opening the workspace may
    # start one: an object store's client) and no event loop.
    sys.stdout.flush()
    sys.stderr.flush()
    _pending_seed = KernelSeed.fork()
    from .runner import main

    return main(["--warm"])


# -- kernels from a seed --------------------------------------------------------------------


class KernelSeed:
    """A fork of a warm job process, made before it starts threads or an event loop, that
    waits for a kernel launch command and then becomes that kernel in-process."""

    def __init__(self, pid: int, command_fd: int):
        self.pid, self._command_fd = pid, command_fd
        self.used = False

    @classmethod
    def fork(cls) -> KernelSeed:
        gc.freeze()  # what this process added since the server's fork: shared too
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write)
            _child(functools.partial(_become_kernel, read))
        os.close(read)
        return cls(pid, write)

    @staticmethod
    def can_launch(cmd: list[str]) -> bool:
        """True for this interpreter's ipykernel: what a seed can become without exec."""
        if len(cmd) < 3 or cmd[1:3] != ["-m", KERNEL_MODULE]:
            return False
        program = shutil.which(os.path.expanduser(cmd[0])) or cmd[0]
        return os.path.realpath(program) == os.path.realpath(sys.executable)

    def launch(self, cmd: list[str], env: dict[str, str], cwd: str | None) -> None:
        self.used = True
        payload = json.dumps({"argv": cmd, "env": env, "cwd": cwd}).encode()
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(self._command_fd, view):]
        finally:
            os.close(self._command_fd)

    def discard(self) -> None:
        """Not needed after all: the end of its pipe makes it exit."""
        if not self.used:
            self.used = True
            with contextlib.suppress(OSError):
                os.close(self._command_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def _become_kernel(command_fd: int) -> int:
    ready = os.environ.get(ENV_READY_FD)  # the job process's, not ours
    if ready:
        with contextlib.suppress(OSError):
            os.close(int(ready))
    os.setsid()  # as jupyter_client starts kernels: interrupts reach its group
    set_process_name("mlops-kernel")
    chunks = []
    while chunk := os.read(command_fd, 65536):
        chunks.append(chunk)
    os.close(command_fd)
    if not chunks:
        return 0  # the job process went away, or started its kernel otherwise
    command = json.loads(b"".join(chunks))
    if command["cwd"]:
        os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)  # as jupyter_client gives a kernel
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    random = sys.modules.get("numpy.random")
    if random is not None:  # the fork copied the server's generator state: draw fresh
        random.seed()  # (not imported yet: it seeds itself when the run imports it)
    args = command["argv"][3:]
    sys.argv = [KERNEL_MODULE, *args]
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)  # as ipykernel_launcher does
    from ipykernel.kernelapp import IPKernelApp

    # ipykernel reads JPY_PARENT_PID when it is imported (in the fork server, without it):
    # give it now, or the kernel would not watch for its job process's death.
    IPKernelApp.launch_instance(argv=args, parent_handle=int(command["env"]["JPY_PARENT_PID"]))
    return 0


def prepare_seeded_kernel(km: Any) -> bool:
    """Make ``km`` launch its kernel through this process's seed. False when there is none
    (a warm process that is a new interpreter) or the provisioner is not installed: the
    kernel is then started as usual."""
    from jupyter_client.provisioning import KernelProvisionerFactory

    if _pending_seed is None:
        return False
    metadata = km.kernel_spec.metadata
    chosen = (metadata.get("kernel_provisioner") or {}).get("provisioner_name",
                                                           "local-provisioner")
    if chosen != "local-provisioner" or \
            PROVISIONER not in KernelProvisionerFactory.instance().provisioners:
        _pending_seed.discard()  # the end of its pipe ends it
        return False  # the kernelspec wants another provisioner, or ours is not installed
    metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER, "config": {}}
    return True


class _SeededProcess(PolledProcess):
    """The ``Popen`` face of a kernel forked from a seed (a child of this process)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (kill_tree waits for it)
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class SeededProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches the kernel through this process's seed when it has one, else as usual."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        global _pending_seed
        seed, _pending_seed = _pending_seed, None
        if seed is None or not KernelSeed.can_launch(cmd):
            if seed is not None:
                seed.discard()
            return await super().launch_kernel(cmd, **kwargs)
        env = dict(kwargs.get("env") or os.environ)
        env["JPY_PARENT_PID"] = str(os.getpid())  # ipykernel exits when we are gone
        cwd = kwargs.get("cwd")
        seed.launch([os.path.expanduser(s) for s in cmd], env, os.fspath(cwd) if cwd else None)
        self.process = _SeededProcess(seed.pid)
        self.pid = self.pgid = seed.pid  # the seed made itself a session leader
        self.cwd = cwd
        return self.connection_info
