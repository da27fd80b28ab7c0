"""A scoring worker: ``python -m jupyter_mlops.serving.worker`` (started by the supervisor).

It inherits the endpoint's listening socket (shared with the other workers and the
supervisor, so a worker can stop while the socket keeps accepting), runs the entry script's
``init()`` once, then serves the app under uvicorn. It talks to its supervisor through the
stdout it was given (one JSON object a line: ``ready``, ``failed``, ``stats``); everything
else it prints — the entry script's output, tracebacks — goes to stderr, the endpoint's log.
It dies with its supervisor (a parent-death signal), and SIGTERM makes it stop accepting,
finish the requests in flight and exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, TextIO

ENV_CONFIG = "JUPYTER_MLOPS_SERVE_CONFIG"


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies (even by kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _limit_memory(limit: int | None) -> None:
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _say(control: TextIO, event: str, **fields: Any) -> None:
    control.write(json.dumps({"event": event, **fields}) + "\n")
    control.flush()


def main() -> int:
    _die_with_parent()
    config = json.loads(os.environ[ENV_CONFIG])
    # stdout is the supervisor's channel; the user's prints go to the log (stderr).
    control = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _limit_memory(config.get("memory"))

    from ._app import Stats, build_app
    from ._entry import load_entry

    try:
        run = load_entry(config["entry_path"])
    except BaseException:  # init() raising, a syntax error, a missing run(): fail, no retry
        detail = traceback.format_exc()
        sys.stderr.write(detail)
        sys.stderr.flush()
        _say(control, "failed", error=detail.strip().splitlines()[-1], detail=detail[-4000:])
        return 1

    import uvicorn

    # init() is done: this worker answers from its first request (it only starts listening
    # now; the supervisor hears "ready" once uvicorn accepts).
    ready = threading.Event()
    ready.set()
    stats = Stats()

    def log(text: str) -> None:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()

    app = build_app(run, key_hash=config.get("key_hash"), max_body=config["max_body"],
                    timeout=config["timeout"], threads=config["threads"],
                    is_ready=ready.is_set, stats=stats, log=log)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=config["timeout"] + 5, timeout_keep_alive=5))
    listener = socket.socket(fileno=config["fd"])

    def report() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.005)
        if server.started:
            _say(control, "ready", pid=os.getpid())
        while not server.should_exit:
            time.sleep(1.0)
            _say(control, "stats", **stats.snapshot())
        _say(control, "stats", **stats.snapshot())

    threading.Thread(target=report, name="mlops-serve-report", daemon=True).start()
    server.run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(main())
