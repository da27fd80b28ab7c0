"""The per-host agent of a workspace: ``python -m jupyter_mlops.jobs.agent [--status|--stop]``.

Submitters start it on demand when ``LocalTarget.warm`` is on (see
``jupyter_mlops.compute.agent``); it exits by itself after ``LocalTarget.agent_idle``
seconds without work. It lives here, above ``compute``, because it also runs the jobs
layer's reaper: runs whose job process is gone become ``lost`` even when nobody reads them.

``--status`` prints the running agent's pid and warm processes; ``--stop`` asks it to exit
(runs it started go on).
"""

from __future__ import annotations

import json
import sys

from ..compute import get_target
from ..compute.agent import Agent, AgentPaths, ping, request
from ..store import Backend
from ._control import reap

RUNNER = "jupyter_mlops.jobs.runner"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    backend = Backend.open()
    paths = AgentPaths.for_workspace(backend.location.directory)
    if argv in (["--status"], ["--stop"]):
        answer = ping(paths)
        if answer is None:
            print(f"no agent serves {backend.location.directory} on this host")
            return 1
        if argv == ["--stop"]:
            answer = request(paths.socket, {"op": "stop"})
        print(json.dumps(answer))
        return 0
    if argv:
        print("usage: python -m jupyter_mlops.jobs.agent [--status|--stop]", file=sys.stderr)
        return 2
    target = get_target("local")
    return Agent(backend, target, reap=reap, runner_module=RUNNER).run()  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
