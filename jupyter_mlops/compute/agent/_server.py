"""The agent: one process per host and workspace that starts runs' jobs from warm processes.

It holds ``paths.lock`` for its whole life (a second agent exits at once), listens on a
Unix socket only its own user may use (mode 0600 in a 0700 folder, and each peer's uid
checked with ``SO_PEERCRED``), and keeps a pool of *warm* job processes: each has done its
imports and started its kernel (with the slot's ``CUDA_VISIBLE_DEVICES`` and the preloaded
modules) and waits on its stdin for the one run it will execute. Where it can, they are
forked from the agent's fork server (``_forks``: milliseconds each, no new interpreter);
else each is a new interpreter. A run submitted while its warm process still boots waits
here (``pending``) rather than starting cold. A handed-over job process
is on its own from then on (its own session, no parent-death signal): if the agent dies,
the runs go on and record their endings. Warm processes that still wait die with the agent
(parent-death signal, and their stdin closes); their kernels follow them (ipykernel exits
when its parent is gone).

One thread does everything (accepting, spawning, reaping): a parent-death signal is tied
to the thread that started the child, so every child is started from this one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._processes import kill_tree, warn
from ...store import ACTIVE, HOSTNAME
from ._forks import Forked, ForkServer, fork_supported
from ._os import peer_uid
from ._paths import AgentPaths

if TYPE_CHECKING:
    from ...store import Backend
    from ..local import LocalTarget

ENV_AGENT_PID = "JUPYTER_MLOPS_AGENT_PID"  # a warm process checks its parent is this agent
ENV_PRELOAD_CODE = "JUPYTER_MLOPS_WARM_PRELOAD"  # modules a warm kernel imports, comma-separated
ENV_READY_FD = "JUPYTER_MLOPS_WARM_READY_FD"  # a warm process writes a byte there when ready
BUSY_CHECK = 2.0  # seconds between two looks at the store for active runs (idle timer)
REAP_EVERY = 10.0
MAX_REQUEST = 1 << 16  # bytes: a request is one short JSON line
CLIENT_TIMEOUT = 10.0  # seconds a client has to send its whole request
REFILL_PAUSE = 5.0  # seconds between two replacements of crashed warm processes of a slot
PENDING_WAIT = 10.0  # seconds a run waits for a booting warm process before it starts cold


def packages_stamp() -> frozenset[tuple[str, str, int]]:
    """The installed packages, as the folders of this process's import path (the one warm
    processes inherit) record them: each ``*.dist-info`` / ``*.egg-info`` folder and
    ``*.pth`` file, with its inode. Installing, upgrading (a new version's folder), removing
    or reinstalling a package changes the set; a repository on the path, whose files change
    all day, does not. Editing a file inside an installed package is not seen."""
    here = os.getcwd()
    stamp = set()
    for folder in sys.path:
        if not folder or os.path.abspath(folder) == here:
            continue
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith((".dist-info", ".egg-info", ".pth")):
                        stamp.add((folder, entry.name, entry.inode()))
        except OSError:  # not a folder (a zip), or gone
            continue
    return frozenset(stamp)


class Agent:
    def __init__(self, backend: Backend, target: LocalTarget, *,
                 reap: Callable[[Backend], Any], runner_module: str):
        self.backend, self.target, self._reap = backend, target, reap
        self.runner_module = runner_module
        self.paths = AgentPaths.for_workspace(backend.location.directory)
        self.pool: dict[str, list[Any]] = {}  # warm processes (Popen, or Forked) per key
        self.handed: list[Any] = []  # job processes we started (to reap zombies)
        self._stopping = False
        self._socket_id: tuple[int, int] | None = None  # our socket file, once bound
        self._lock_id: tuple[int, int] | None = None  # our lock file, once held
        self._refilled: dict[str, float] = {}
        self._ready_pipes: dict[int, int] = {}  # warm pid -> read end of its ready pipe
        self._ready: set[int] = set()
        # Runs waiting for a warm process that is still booting:
        # (run id, gpus, the key of the process it waits for, deadline).
        self.pending: list[tuple[str, int, str | None, float]] = []
        self.forkserver: ForkServer | None = None
        self._packages: frozenset[tuple[str, str, int]] = frozenset()  # packages_stamp()

    # -- life ------------------------------------------------------------------------------

    def run(self) -> int:
        lock = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another agent serves this workspace on this host
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())
        listener = self._listen()
        self._socket_id = self._file_id(self.paths.socket)
        self._lock_id = self._file_id(self.paths.lock)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        try:
            print(f"agent {os.getpid()} serving {self.backend.location.directory} "
                  f"(idle exit after {self.target.agent_idle:g} s)", flush=True)
            self._reap(self.backend)  # what a crash or a reboot left behind
            self._start_forkserver()
            for key in self._initial_keys():
                self._fill(key)
            self._adopt()
            self._serve(listener)
        finally:
            if self._still_ours():  # never remove the socket of an agent that replaced us
                with contextlib.suppress(OSError):
                    os.unlink(self.paths.socket)
            listener.close()
            self._drain_pool()
            if self.forkserver is not None:
                self.forkserver.close()
            os.close(lock)
        return 0

    def stop(self) -> None:
        self._stopping = True

    @staticmethod
    def _file_id(path: os.PathLike[str]) -> tuple[int, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _still_ours(self) -> bool:
        """False once our socket was removed or replaced by another agent's."""
        return self._file_id(self.paths.socket) == self._socket_id

    def _workspace_gone(self) -> bool:
        """True once our lock file was removed or replaced: the workspace folder was deleted
        (and perhaps made anew at the same path). This agent then serves nobody: it must not
        take runs of a new database found at the old path, nor let its reaper judge them."""
        return not self._still_ours() or self._file_id(self.paths.lock) != self._lock_id

    def _listen(self) -> socket.socket:
        path = os.fspath(self.paths.socket)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead agent's socket: we hold the lock, so it is not in use
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: no window where others connect
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _serve(self, listener: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        watched: ForkServer | None = None  # the fork server whose "up" we wait for
        # Connections whose request is still arriving: (what came so far, deadline). One
        # slow or silent client does not hold up the others, nor the runs waiting here.
        clients: dict[socket.socket, tuple[bytearray, float]] = {}
        last_check = last_reap = self._last_busy = time.monotonic()
        while not self._stopping:
            forks = self.forkserver
            if forks is not watched:  # a new fork server (at start, or renewed)
                if watched is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(watched)
                watched = forks
                if forks is not None and not forks.up and forks.broken is None:
                    selector.register(forks, selectors.EVENT_READ)
            # Runs waiting for a booting warm process: look at its ready pipe often.
            for key, _events in selector.select(timeout=0.01 if self.pending else 0.5):
                if key.fileobj is forks and forks is not None:
                    selector.unregister(forks)  # its only message before requests: "up"
                    forks.read_up()
                    self._forkserver_changed()
                    continue
                if key.fileobj is listener:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        selector.register(conn, selectors.EVENT_READ)
                        clients[conn] = (bytearray(), time.monotonic() + CLIENT_TIMEOUT)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                request = clients[conn][0]
                if self._read_request(conn, request):  # complete: answer it
                    selector.unregister(conn)
                    del clients[conn]
                    self._handle(conn, bytes(request))
            now = time.monotonic()
            for conn, (_, deadline) in list(clients.items()):
                if now > deadline:  # a client that never finished its request
                    warn("agent: a client sent no complete request within "
                         f"{CLIENT_TIMEOUT:g} s; closing it", sys.stdout)
                    selector.unregister(conn)
                    del clients[conn]
                    conn.close()
            self._dispatch_pending()
            self._collect_children()
            looks = now - last_check >= BUSY_CHECK or now - last_reap >= REAP_EVERY
            if looks and self._workspace_gone():
                print(f"agent {os.getpid()}: its workspace folder or socket was removed or "
                      "replaced, exiting", flush=True)
                return
            if now - last_reap >= REAP_EVERY:
                self._reap(self.backend)
                last_reap = now
            if now - last_check >= BUSY_CHECK:
                last_check = now
                if self._packages != packages_stamp():
                    if watched is not None:  # unregistered before its socket closes
                        with contextlib.suppress(KeyError, ValueError):
                            selector.unregister(watched)
                        watched = None
                    self._renew()
                if self._busy():
                    self._last_busy = now
                elif now - self._last_busy >= self.target.agent_idle:
                    print(f"agent {os.getpid()}: idle for {self.target.agent_idle:g} s, "
                          "exiting", flush=True)
                    return

    def _busy(self) -> bool:
        """Active runs of this host in the workspace (ours or adopted from an earlier agent)."""
        try:
            rows = self.backend.store.list_runs(status=ACTIVE)
        except Exception:
            return True  # the database is away for now: do not leave on that
        return any(r["host"] in (None, HOSTNAME) and r["target"] == self.target.name
                   for r in rows)

    # -- requests --------------------------------------------------------------------------

    def _handle(self, conn: socket.socket, line: bytes) -> None:
        """Answer one client's request (the whole line read), then close its connection."""
        with conn:
            conn.setblocking(True)
            conn.settimeout(5.0)  # for the answer: a few hundred bytes
            try:
                uid = peer_uid(conn)
                if uid != os.getuid():
                    warn(f"agent: refused a connection from uid {uid}", sys.stdout)
                    self._answer(conn, {"ok": False, "error": f"refused: uid {uid} is not "
                                        f"the agent's user ({os.getuid()})"})
                    return
                message = json.loads(line)
                if message.get("op") != "ping":  # looking at the agent is not work for it:
                    self._last_busy = time.monotonic()  # a sidebar's `targets` would keep it
                self._answer(conn, self._dispatch(message))
            except Exception as exc:  # one bad client must not stop the agent
                warn(f"agent: request failed: {exc!r}", sys.stdout)
                with contextlib.suppress(OSError):
                    self._answer(conn, {"ok": False, "error": str(exc)})

    @staticmethod
    def _read_request(conn: socket.socket, request: bytearray) -> bool:
        """Add what arrived to ``request``; True once it is complete: a whole line, the
        client's end of sending, or too long. The refusal of another user's request is sent
        after reading it too: closing a socket with unread data resets it, and the client
        would not see why."""
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        request += chunk
        return not chunk or request.endswith(b"\n") or len(request) >= MAX_REQUEST

    @staticmethod
    def _answer(conn: socket.socket, answer: dict[str, Any]) -> None:
        conn.sendall(json.dumps(answer).encode() + b"\n")

    def _dispatch(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "ping":
            # idle_for counts from the last active run or request: the agent (and its warm
            # kernels) exits at idle_exit, which `targets` shows (scale to zero).
            return {"ok": True, "pid": os.getpid(),
                    "idle_for": time.monotonic() - getattr(self, "_last_busy", time.monotonic()),
                    "idle_exit": self.target.agent_idle,
                    "warm": {k: len(v) for k, v in self.pool.items()},
                    "pending": len(self.pending),
                    "forkserver": None if self.forkserver is None else (
                        self.forkserver.broken or ("up" if self.forkserver.up else "booting")),
                    "ready": {k: sum(self._is_ready(p) for p in v if p.poll() is None)
                              for k, v in self.pool.items()}}
        if op == "stop":
            self.stop()
            return {"ok": True, "pid": os.getpid()}
        if op == "submit":
            if self._workspace_gone():  # the submitter starts the run cold, or a new agent
                self.stop()
                return {"ok": False, "error": "this agent's workspace folder was deleted; "
                                              "it is exiting"}
            pid = self.submit(str(message["run"]), int(message.get("gpus", 0)))
            return {"ok": True, "pid": pid}  # None: it waits for a warm process to boot
        return {"ok": False, "error": f"unknown request {op!r}"}

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, run_id: str, gpus: int) -> int | None:
        """Start the run's job: a warm process if one fits its slot and is ready; if one
        is booting (a fork: a fraction of a second), the run waits for it up to
        ``PENDING_WAIT``; else a cold process starts it. Returns the job's pid, or None
        while the run waits."""
        row = self.backend.store.get_run_row(run_id)
        if row is not None and (row["pid"] or any(p[0] == run_id for p in self.pending)):
            return row["pid"]  # handed already (a submitter retrying after a broken link)
        key, process = self._start(run_id, gpus, waiting=True)
        if process is None:
            self.pending.append((run_id, gpus, key, time.monotonic() + PENDING_WAIT))
            # Ours now (host, no pid yet): a later agent adopts it if we die.
            self.backend.store.update_run(run_id, host=HOSTNAME, heartbeat_at=time.time())
            return None
        return self._record(run_id, process)

    def _record(self, run_id: str, process: Any) -> int:
        self.handed.append(process)
        # Recorded before we answer: a submitter whose connection broke sees the run taken.
        self.backend.store.update_run(run_id, host=HOSTNAME, pid=process.pid,
                                      heartbeat_at=time.time())
        return process.pid

    def _refill(self, key: str, taken: bool) -> None:
        """After a run was handed (or found none ready): boot the next warm process for
        ``key`` beside it. A set of several GPUs gets one only when a run asks for it."""
        if "," not in key:
            self._fill(key)
        elif not taken and not any(p.poll() is None for p in self.pool.get(key, [])):
            self.pool.setdefault(key, []).append(self._spawn(["--warm"], cuda=key))

    def _booting(self, key: str) -> bool:
        """A warm process for ``key`` will be ready soon (it, or the fork server, boots)."""
        if self.forkserver is not None and self.forkserver.broken is None \
                and not self.forkserver.up:
            return True
        return any(p.poll() is None for p in self.pool.get(key, []))

    def _start(self, run_id: str, gpus: int, waiting: bool) -> tuple[str | None, Any]:
        """Hand the run to a ready warm process of its devices (``key``), booting the next
        one beside it; if none is ready, start it cold unless it may keep ``waiting`` for
        one that boots. Returns the key and the job process (None: it waits)."""
        key = self._key(gpus)
        process = self._take(key) if key is not None else None
        if process is not None:
            try:
                self._hand(process, run_id)
            except OSError:  # it died just now
                process = None
        if key is not None:
            self._refill(key, taken=process is not None)
        if process is None and not (waiting and key is not None and self._booting(key)):
            process = self._spawn([run_id])
        return key, process

    def _dispatch_pending(self) -> None:
        """Hand waiting runs, oldest first, to warm processes that became ready; start
        cold the ones that waited ``PENDING_WAIT``. Called every round while runs wait:
        it looks only at the warm processes of each run's devices until one is ready."""
        still = []
        for run_id, gpus, key, deadline in self.pending:
            patient = time.monotonic() <= deadline
            ready = key is not None and any(
                p.poll() is None and self._is_ready(p) for p in self.pool.get(key, []))
            if not ready and patient and key is not None and self._booting(key):
                still.append((run_id, gpus, key, deadline))
                continue
            if not self._still_queued(run_id):
                continue  # canceled (or deleted) while it waited: nothing to start
            key, process = self._start(run_id, gpus, waiting=patient)
            if process is None:
                still.append((run_id, gpus, key, deadline))
                continue
            try:
                self._record(run_id, process)
            except Exception as exc:  # the store is away: the job records itself anyway
                warn(f"agent: recording run {run_id}'s job failed: {exc}", sys.stdout)
        self.pending = still

    def _still_queued(self, run_id: str) -> bool:
        try:
            row = self.backend.store.get_run_row(run_id)
        except Exception:  # the store is away for now: start it; the job checks again
            return True
        return row is not None and row["status"] == "queued" and not row["pid"]

    def _adopt(self) -> None:
        """Runs an earlier agent of this host accepted but had not started when it died."""
        try:
            rows = self.backend.store.list_runs(status=["queued"])
        except Exception as exc:
            warn(f"agent: could not look for runs to adopt: {exc}", sys.stdout)
            return
        for row in sorted(rows, key=lambda r: r["created_at"]):
            if row["host"] == HOSTNAME and not row["pid"] and row["target"] == self.target.name:
                print(f"agent {os.getpid()}: adopting queued run {row['id']}", flush=True)
                # gpus 0: the job claims what its spec asks; a warm kernel started for other
                # devices is then replaced by one started cold (execute checks the fit).
                self.pending.append((row["id"], 0, self._key(0),
                                     time.monotonic() + PENDING_WAIT))

    def _take(self, key: str) -> subprocess.Popen | None:
        """A warm process of ``key`` that is ready. One still booting is not handed a run:
        until it reads its run it dies with the agent, and the run would die with it."""
        for process in self.pool.get(key, []):
            if process.poll() is None and self._is_ready(process):
                self.pool[key].remove(process)
                self._forget(process)
                return process
        return None

    def _is_ready(self, process: subprocess.Popen) -> bool:
        if process.pid in self._ready:
            return True
        fd = self._ready_pipes.get(process.pid)
        if fd is None:
            return False
        try:
            if os.read(fd, 1):
                self._ready.add(process.pid)
                return True
        except BlockingIOError:
            pass
        return False

    def _forget(self, process: subprocess.Popen) -> None:
        self._ready.discard(process.pid)
        fd = self._ready_pipes.pop(process.pid, None)
        if fd is not None:
            os.close(fd)

    def _hand(self, process: subprocess.Popen, run_id: str) -> None:
        assert process.stdin is not None
        process.stdin.write(f"{run_id}\n".encode())
        process.stdin.close()

    def _key(self, gpus: int) -> str | None:
        """The ``CUDA_VISIBLE_DEVICES`` a warm kernel for this request must have started
        with, or None when no warm kernel fits: the run starts cold."""
        slots = self.target.inventory()
        if slots[0].kind == "cpu" or gpus == 0:
            return ""
        free = [s.slot.id for s in self.target.slots(self.backend) if not s.held]
        if gpus > 1:
            # Several GPUs: the set the run's claim will take (the lowest free ones), forked
            # for it on demand; none is kept warm for every combination. Without a fork
            # server, or without that many free GPUs (the run queues), it starts cold.
            if self.forkserver is None or not self.forkserver.usable() or len(free) < gpus:
                return None
            return ",".join(free[:gpus])
        # Slots are claimed in the queue's order, lowest free first; a run handed just
        # before may not hold its slot yet, so prefer a free slot whose warm process is ready.
        for gpu in free:
            if any(p.poll() is None and self._is_ready(p) for p in self.pool.get(gpu, [])):
                return gpu
        return (free or [slots[0].id])[0]

    def _initial_keys(self) -> list[str]:
        slots = self.target.inventory()
        return [""] if slots[0].kind == "cpu" else [s.id for s in slots]

    def _fill(self, key: str) -> None:
        """Keep ``warm_kernels`` warm processes for ``key`` (one per slot by default: a
        GPU's key stands for one slot, the CPU key for all of them). While the fork server
        boots, nothing: it fills the pool once up (``_forkserver_changed``)."""
        if self.forkserver is not None and self.forkserver.broken is None \
                and not self.forkserver.up:
            self.pool.setdefault(key, [])  # filled once the server is up
            return
        wanted = self.target.warm_kernels
        if wanted is None:
            wanted = self.target.cpu_slots if self.target.inventory()[0].kind == "cpu" else 1
        alive = []
        for process in self.pool.get(key, []):
            if process.poll() is None:
                alive.append(process)
            else:
                self._forget(process)
        while len(alive) < wanted:
            alive.append(self._spawn(["--warm"], cuda=key))
        self.pool[key] = alive

    # -- the fork server ----------------------------------------------------------------------

    def _renew(self) -> None:
        """Packages were installed, upgraded or removed since the fork server imported its
        modules: its forks (and the warm processes waiting for a run) would run the old
        versions, and record the old environment. Start them all anew."""
        print(f"agent {os.getpid()}: packages changed on the import path: starting a new fork "
              "server and new warm processes", flush=True)
        self._drain_pool()  # they have no run yet: nothing is lost
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None
        self._start_forkserver()
        self._forkserver_changed()

    def _start_forkserver(self) -> None:
        """Warm processes are forked from a fork server when the platform allows it."""
        self._packages = packages_stamp()  # what it (and new interpreters) will import
        if not (self.target.fork and fork_supported()):
            return
        env = self._child_env()
        env[ENV_PRELOAD_CODE] = ",".join(self.target.preload_modules())
        try:
            with open(self.paths.log, "ab") as out:
                self.forkserver = ForkServer(
                    [sys.executable, "-m", self.runner_module, "--forkserver"], env,
                    self.backend.location.directory, out)
        except OSError as exc:
            warn(f"agent: no fork server ({exc}); warm processes start as new interpreters",
                 sys.stdout)

    def _forkserver_changed(self) -> None:
        forks = self.forkserver
        if forks is not None and forks.broken is not None:
            warn(f"agent: {forks.broken}; warm processes start as new interpreters",
                 sys.stdout)
        for key in dict.fromkeys([*self._initial_keys(), *self.pool]):
            if "," not in key:
                self._fill(key)

    def _fork(self, cuda: str) -> Forked:
        """A warm process from the fork server: its stdin and ready pipe are ours."""
        assert self.forkserver is not None
        stdin_read, stdin_write = os.pipe()
        ready_read, ready_write = os.pipe()
        log = os.open(self.paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            pid = self.forkserver.fork(cuda, stdin_read, ready_write, log)
        except BaseException:
            os.close(stdin_write)
            os.close(ready_read)
            raise
        finally:
            for fd in (stdin_read, ready_write, log):
                os.close(fd)
        os.set_blocking(ready_read, False)
        self._ready_pipes[pid] = ready_read
        return Forked(pid, open(stdin_write, "wb"))

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self.backend.location.to_env(), ENV_AGENT_PID: str(os.getpid())}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    def _spawn(self, args: list[str], cuda: str | None = None) -> Any:
        if cuda is not None and self.forkserver is not None and self.forkserver.usable():
            try:
                return self._fork(cuda)
            except OSError as exc:
                warn(f"agent: {exc}; warm processes start as new interpreters", sys.stdout)
        env = self._child_env()
        ready_read = ready_write = -1
        if cuda is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda
            env[ENV_PRELOAD_CODE] = ",".join(self.target.preload_modules())
            ready_read, ready_write = os.pipe()
            os.set_blocking(ready_read, False)
            env[ENV_READY_FD] = str(ready_write)
        try:
            with open(self.paths.log, "ab") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", self.runner_module, *args],
                    stdin=subprocess.PIPE if cuda is not None else subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    close_fds=True, pass_fds=(ready_write,) if cuda is not None else (),
                    env=env, cwd=self.backend.location.directory)
        except BaseException:
            if cuda is not None:
                os.close(ready_read)
            raise
        finally:
            if cuda is not None:
                os.close(ready_write)
        if cuda is not None:
            self._ready_pipes[process.pid] = ready_read
        return process

    def _collect_children(self) -> None:
        self.handed = [p for p in self.handed if p.poll() is None]
        forks = self.forkserver
        if forks is not None and forks.broken is None and forks.process.poll() is not None:
            forks.broken = f"the fork server exited (code {forks.process.returncode})"
            self._forkserver_changed()  # its waiting processes died with it: refill
        now = time.monotonic()
        for key, processes in self.pool.items():
            if (any(p.poll() is not None for p in processes) and not self._stopping
                    and now - self._refilled.get(key, 0.0) >= REFILL_PAUSE):
                # A warm process died (it should not): replace it, but not in a tight loop.
                warn(f"agent: a warm job process for CUDA_VISIBLE_DEVICES={key!r} exited; "
                     "starting another", sys.stdout)
                self._refilled[key] = now
                if "," in key:  # a set of GPUs gets a warm process on demand only
                    self.pool[key] = [p for p in processes if p.poll() is None]
                else:
                    self._fill(key)

    def _drain_pool(self) -> None:
        """Close the warm processes' stdin (they shut their kernels down and exit), then
        kill what is left of them."""
        processes = [p for ps in self.pool.values() for p in ps]
        for process in processes:
            self._forget(process)
            with contextlib.suppress(OSError):
                process.stdin.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 5.0
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                kill_tree(process.pid)
        self.pool.clear()
