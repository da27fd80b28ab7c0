"""An endpoint's server process: ``python -m jupyter_mlops.serving.supervisor ENDPOINT_ID``.

It holds the endpoint's listening socket (bound by the deploying process and inherited, so
the URL is known before anything starts) and runs ``replicas`` worker processes that share
it (``serving.worker``). It beats the endpoint's heartbeat with the workers' request
figures, copies their output into the endpoint's log, and in the same round trip learns of:

- a new revision (a redeploy under the same name): it starts the new workers, waits until
  they are ready, then stops the old ones, which finish their requests in flight. The socket
  never closes, so clients see no failed request. A revision whose ``init()`` fails is
  recorded and the old one goes on serving;
- a stop request (``Endpoint.delete()``): the workers drain and exit, then it does.

A worker that dies ends the endpoint ``failed`` with its log; there is no restart loop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._processes import warn
from .worker import ENV_CONFIG

if TYPE_CHECKING:
    from ..store import Backend

ENV_START = "JUPYTER_MLOPS_SERVE_START"  # the first revision's row, from the deploying process
HEARTBEAT_EVERY = 1.0
START_TIMEOUT = 300.0  # seconds for init() of a revision's workers
LOG_TAIL = 40  # lines of a failed worker's output put in the endpoint's error


class LogWriter:
    """Lines for the endpoint's log, written to the store in batches from a thread."""

    def __init__(self) -> None:
        self.backend: Backend | None = None  # attached once the store is open
        self.endpoint_id = ""
        self.queue: deque[tuple[str, float]] = deque()
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-endpoint-log",
                                        daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        self.tail.append(text)
        self.queue.append((text, time.time()))

    def attach(self, backend: Backend, endpoint_id: str) -> None:
        self.backend, self.endpoint_id = backend, endpoint_id

    def flush(self) -> None:
        if self.backend is None:
            return
        batch = [self.queue.popleft() for _ in range(len(self.queue))]
        if batch:
            self.backend.endpoints.append_logs(self.endpoint_id, batch)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.flush()
            except Exception as exc:  # the database is away: the next round retries
                warn(f"jupyter-mlops: endpoint log write failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


class Worker:
    """One worker process and what it has said (ready, failed, its request figures)."""

    def __init__(self, argv: list[str], env: dict[str, str], fd: int, log: LogWriter,
                 label: str):
        self.ready = threading.Event()
        self.failed: str | None = None
        self.stats: dict[str, Any] = {"requests": 0, "errors": 0, "p50": None, "p99": None}
        self.log, self.label = log, label
        self.process = subprocess.Popen(argv, env=env, pass_fds=[fd], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        threading.Thread(target=self._read_control, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_control(self) -> None:
        for raw in self.process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                self.log.line(raw.rstrip("\n"))
                continue
            if message["event"] == "ready":
                self.ready.set()
            elif message["event"] == "failed":
                self.failed = message.get("error") or "init() failed"
            elif message["event"] == "stats":
                self.stats = {k: message.get(k) for k in ("requests", "errors", "p50", "p99")}

    def _read_log(self) -> None:
        for raw in self.process.stderr:
            self.log.line(raw.rstrip("\n"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Supervisor:
    def __init__(self, endpoint_id: str, fd: int):
        self.backend: Backend | None = None
        self.endpoint_id, self.fd = endpoint_id, fd
        self.log = LogWriter()
        self.workers: list[Worker] = []
        self.retired: dict[str, int] = {"requests": 0, "errors": 0}
        self.stopping = threading.Event()
        self.revision = 0

    # -- workers of one revision ---------------------------------------------------------

    def start_revision(self, row: dict[str, Any]) -> list[Worker]:
        config = row["config"]
        folder = Path(config["folder"])
        threads = max(1, int(config.get("cores") or 1))
        env = {**os.environ,
               ENV_CONFIG: json.dumps({
                   "fd": self.fd, "entry_path": str(folder / "entry.py"),
                   "key_hash": row["key_hash"], "max_body": config["max_body"],
                   "timeout": config["timeout"],
                   # requests run() handles at once: more than the cores, so one slow
                   # request (answered 504 after the timeout) never holds up the others
                   "threads": max(4, 2 * threads),
                   "memory": config.get("memory")}),
               "MLOPS_MODEL_DIR": str(folder / "model"),
               "MLOPS_MODEL_INFO": json.dumps(config.get("model_info", {})),
               "MLOPS_ENDPOINT": row["name"],
               "PYTHONUNBUFFERED": "1"}
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
        argv = [sys.executable, "-m", "jupyter_mlops.serving.worker"]
        self.log.line(f"endpoint: starting revision {row['revision']} "
                      f"({row['model_name']}:{row['model_version']}, {row['entry_name']}, "
                      f"{config['replicas']} worker(s) x {threads} thread(s))")
        return [Worker(argv, env, self.fd, self.log, f"r{row['revision']}w{i}")
                for i in range(int(config["replicas"]))]

    def wait_ready(self, workers: list[Worker]) -> str | None:
        """None once every worker is ready; else why not (init failed, died, timed out)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready.is_set() for w in workers):
            for w in workers:
                if w.failed or not w.alive():
                    w.process.wait(timeout=10)
                    return w.failed or f"a worker exited with code {w.process.returncode}"
            if self.stopping.is_set():
                return "stopped before it was ready"
            if time.monotonic() > deadline:
                return f"init() did not finish within {START_TIMEOUT:g} s"
            time.sleep(0.01)
        return None

    def retire(self, workers: list[Worker]) -> None:
        """Stop ``workers``: they finish their requests in flight and exit."""
        for w in workers:
            w.stop()
        for w in workers:
            w.wait(timeout=60)
            self.retired["requests"] += w.stats.get("requests") or 0
            self.retired["errors"] += w.stats.get("errors") or 0

    def stats(self) -> dict[str, Any]:
        live = [w.stats for w in self.workers]
        def worst(key: str) -> float | None:
            values = [s[key] for s in live if s.get(key) is not None]
            return max(values) if values else None
        return {"requests": self.retired["requests"] + sum(s["requests"] or 0 for s in live),
                "errors": self.retired["errors"] + sum(s["errors"] or 0 for s in live),
                "p50": worst("p50"), "p99": worst("p99"), "workers": len(live)}

    def failure_text(self, why: str) -> str:
        tail = "\n".join(self.log.tail)
        return f"{why}\n--- endpoint log (last lines) ---\n{tail}" if tail else why

    # -- the life of the endpoint ----------------------------------------------------------

    def run(self, row: dict[str, Any]) -> int:
        """Serve from the workers of ``row`` (started already) until stopped or failed."""
        endpoints = self.backend.endpoints
        problem = self.wait_ready(self.workers)
        if problem is not None:
            self.retire(self.workers)
            self.log.line(f"endpoint: revision {row['revision']} failed: {problem}")
            self.log.close()
            endpoints.set_status(self.endpoint_id, "failed", error=self.failure_text(problem))
            return 1
        self.revision = row["revision"]
        endpoints.set_status(self.endpoint_id, "ready", served_revision=self.revision,
                             error=None)
        self.log.line(f"endpoint: ready at {row['url']}")
        ending, error = "stopped", None
        while not self.stopping.is_set():
            row = endpoints.heartbeat(self.endpoint_id, self.stats())
            if row["stop_requested_at"]:
                break
            if row["revision"] > self.revision:
                self.swap(row)
            dead = [w for w in self.workers if not w.alive()]
            if dead:
                code = dead[0].process.returncode
                why = (f"a worker exited with code {code}" if code >= 0 else
                       f"a worker was killed by signal {-code}")
                self.log.line(f"endpoint: {why}; stopping")
                ending, error = "failed", why
                break
            self.stopping.wait(HEARTBEAT_EVERY)
        self.retire(self.workers)
        self.log.line(f"endpoint: {ending}")
        self.log.close()
        endpoints.set_status(self.endpoint_id, ending, stats=self.stats(),
                             error=self.failure_text(error) if error else None)
        return 0 if ending == "stopped" else 1

    def swap(self, row: dict[str, Any]) -> None:
        """Serve ``row``'s revision: new workers first, the old ones drained after."""
        fresh = self.start_revision(row)
        problem = self.wait_ready(fresh)
        if problem is not None:
            self.retire(fresh)
            self.log.line(f"endpoint: revision {row['revision']} failed, revision "
                          f"{self.revision} goes on serving: {problem}")
            self.backend.endpoints.update(
                self.endpoint_id, error=self.failure_text(
                    f"revision {row['revision']} failed: {problem}"),
                config={**row["config"], "failed_revision": row["revision"]})
            self.revision = row["revision"]  # do not retry it every second
            return
        old, self.workers = self.workers, fresh
        self.retire(old)
        self.revision = row["revision"]
        self.backend.endpoints.update(self.endpoint_id, served_revision=self.revision,
                                      error=None)
        self.log.line(f"endpoint: now serving revision {self.revision} "
                      f"({row['model_name']}:{row['model_version']})")


def main(argv: list[str]) -> int:
    endpoint_id, fd = argv[0], int(argv[1])
    supervisor = Supervisor(endpoint_id, fd)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    # The workers boot (imports, init()) while this process opens the store.
    first = json.loads(os.environ.pop(ENV_START))
    supervisor.workers = supervisor.start_revision(first)
    from ..store import HOSTNAME, Backend

    backend = supervisor.backend = Backend.open()
    supervisor.log.attach(backend, endpoint_id)
    backend.endpoints.update(endpoint_id, host=HOSTNAME, pid=os.getpid(),
                             heartbeat_at=time.time())
    try:
        return supervisor.run(first)
    except BaseException as exc:
        for w in supervisor.workers:
            w.process.kill()
        backend.endpoints.set_status(endpoint_id, "failed",
                                     error=f"the endpoint's server failed: {exc!r}")
        raise
    finally:
        socket.socket(fileno=fd).close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
