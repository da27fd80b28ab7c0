"""Submitting a notebook as a run: validate, record it ``queued``, start its job process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

from ..errors import InvalidInput
from ..workspace import Run, Workspace, new_run_id
from ._spec import JobSpec, job_dir


def read_notebook(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """Read and validate a notebook, with an error that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"notebook {str(path)!r} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        raise InvalidInput(f"{str(path)!r} is not a valid notebook: {exc}".splitlines()[0]
                           ) from None
    return nb


def submit_notebook(
    ws: Workspace,
    notebook: nbformat.NotebookNode,
    *,
    name: str,
    experiment: str = "Default",
    parameters: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    kind: str = "notebook",
    source: str | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    kernel_name: str | None = None,
    target: str = "local",
    env: dict[str, str] | None = None,
    headless: bool = True,
) -> Run:
    """Record a new ``queued`` run for ``notebook`` and start its job process."""
    if timeout is not None and timeout <= 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout}")
    run_id = new_run_id()
    folder = job_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        input_nb = folder / "input.ipynb"
        nbformat.write(notebook, input_nb)
        spec = JobSpec(
            run_id=run_id,
            notebook=str(input_nb),
            parameters=dict(parameters or {}),
            kernel_name=kernel_name,
            cwd=cwd,
            timeout=timeout,
            env=dict(env or {}),
            headless=headless,
        )
        spec.save(folder / "job.json")
        ws.store.create_run(
            run_id, name, experiment, status="queued", kind=kind, source=source,
            target=target, params=spec.parameters, tags=dict(tags or {}),
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    launch_detached(ws, run_id)
    return Run(ws, run_id)


def launch_detached(ws: Workspace, run_id: str, extra_env: dict[str, str] | None = None
                    ) -> subprocess.Popen:
    """Start the job process in its own session, so it survives whoever started it."""
    folder = job_dir(ws, run_id)
    env = {**os.environ, **ws.location.to_env(), **(extra_env or {})}
    with open(folder / "runner.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jupyter_mlops.jobs.runner", run_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=str(folder),
        )
