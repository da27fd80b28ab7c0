"""The submitting side: hand a queued run to the agent, starting the agent if needed.

One request per connection, one JSON line each way. A submitter that finds no agent takes
``spawn_lock`` before starting one, so two submitters at once start a single agent (and
the agent's own lock would stop a second one anyway).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from ..._processes import spawn_detached
from ._paths import AgentPaths, AgentUnavailable

if TYPE_CHECKING:
    from ...store import Backend

AGENT_MODULE = "jupyter_mlops.jobs.agent"  # the agent's program (it composes jobs' reaper)
START_TIMEOUT = 30.0  # an agent that cannot listen by then is taken as broken


def request(path: os.PathLike[str] | str, message: dict[str, Any], timeout: float = 30.0
            ) -> dict[str, Any]:
    """Send one request to the agent listening at ``path`` and return its answer.

    Raises ``OSError`` when nobody listens (or the agent went away before answering).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(os.fspath(path))
        conn.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionResetError("the agent closed the connection without answering")
            data += chunk
    return json.loads(data)


def ping(paths: AgentPaths) -> dict[str, Any] | None:
    try:
        return request(paths.socket, {"op": "ping"}, timeout=5.0)
    except (OSError, ValueError):
        return None


def ensure_agent(backend: Backend, paths: AgentPaths) -> dict[str, Any]:
    """The running agent's ``ping`` answer, after starting the agent if none answers."""
    answer = ping(paths)
    if answer is not None:
        return answer
    with open(paths.spawn_lock, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes
        answer = ping(paths)  # another submitter may have started it meanwhile
        if answer is not None:
            return answer
        process = spawn_detached(
            [sys.executable, "-m", AGENT_MODULE],
            env={**os.environ, **backend.location.to_env()},
            cwd=backend.location.directory, log=paths.log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            answer = ping(paths)
            if answer is not None:
                return answer
            if process.poll() is not None and ping(paths) is None:
                raise AgentUnavailable(
                    f"the agent exited with code {process.returncode}; see {paths.log}")
            time.sleep(0.01)
        raise AgentUnavailable(f"the agent did not answer within {START_TIMEOUT:g} s; "
                               f"see {paths.log}")


def hand_off(backend: Backend, run_id: str, gpus: int) -> int | None:
    """Give the ``queued`` run to this host's agent; returns the pid of its job process, or
    None while the run waits in the agent for a warm process that is booting.

    Raises ``AgentUnavailable`` if no agent could take it (the caller starts it cold). A
    run the agent took before a connection broke is not handed twice: the agent records
    the job's pid before it answers. The agent is asked directly (it is usually up: one
    round trip, not a ping first); only if nobody answers is it looked for, or started.
    """
    paths = AgentPaths.for_workspace(backend.location.directory)
    last: Exception | None = None
    for attempt in range(4):
        try:
            if attempt:
                ensure_agent(backend, paths)
            answer = request(paths.socket, {"op": "submit", "run": run_id, "gpus": gpus})
        except (OSError, ValueError) as exc:  # the agent went idle and left, or died
            last = exc
            row = backend.store.get_run_row(run_id)
            if row is not None and row["pid"]:
                return int(row["pid"])
            continue
        if not answer.get("ok"):
            raise AgentUnavailable(f"the agent refused run {run_id}: {answer.get('error')}")
        return None if answer.get("pid") is None else int(answer["pid"])
    raise AgentUnavailable(f"could not hand run {run_id} to the agent: {last}")
