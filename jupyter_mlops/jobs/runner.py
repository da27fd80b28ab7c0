"""The job process: ``python -m jupyter_mlops.jobs.runner RUN_ID``.

Started detached (its own session) so it outlives the notebook or shell that submitted it;
or ahead of time by the agent (``--warm``), which then writes the run id on its stdin; or,
forked, by the agent's fork server (``--forkserver``, see ``_forkserver``).
It opens the workspace given in its environment, never one found from its working folder.
"""

from __future__ import annotations

import sys
import traceback

from ..store import Backend
from ._execute import execute
from ._spec import JobSpec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jupyter_mlops.jobs.runner RUN_ID|--warm|--forkserver",
              file=sys.stderr)
        return 2
    if argv[0] == "--forkserver":  # the agent's fork server of warm job processes
        from ._forkserver import serve

        return serve()
    backend = Backend.open()
    warm = None
    if argv[0] == "--warm":  # started ahead of time by the agent; it sends the run id
        from ._warm import wait_for_run

        handed = wait_for_run()
        if handed is None:
            return 0
        run_id, warm = handed
    else:
        run_id = argv[0]
    try:
        spec = JobSpec.load(backend, run_id)
        status = execute(backend, spec, warm)
    except BaseException:
        backend.store.set_status(run_id, "failed", error="the job runner crashed:\n"
                                 + traceback.format_exc())
        raise
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
