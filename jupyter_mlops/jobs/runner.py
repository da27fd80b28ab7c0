"""The job process: ``python -m jupyter_mlops.jobs.runner RUN_ID``.

Started detached (its own session) so it outlives the notebook or shell that submitted it.
It opens the workspace given in its environment, never one found from its working folder.
"""

from __future__ import annotations

import sys
import traceback

from ..workspace import workspace
from ._execute import execute
from ._spec import JobSpec, job_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jupyter_mlops.jobs.runner RUN_ID", file=sys.stderr)
        return 2
    run_id = argv[0]
    ws = workspace()
    try:
        spec = JobSpec.load(job_dir(ws, run_id) / "job.json")
        status = execute(ws, spec)
    except BaseException:
        ws.store.set_status(run_id, "failed", error="the job runner crashed:\n"
                            + traceback.format_exc())
        raise
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
