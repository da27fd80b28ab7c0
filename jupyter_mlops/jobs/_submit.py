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
from ._cell import (
    CARRIED_DIR,
    DEFAULT_MAX_CARRY_BYTES,
    bound_names,
    build_job_notebook,
    carry,
    free_names,
)
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
    gpus: int = 0,
    run_id: str | None = None,
    parent_id: str | None = None,
    resources: dict[str, Any] | None = None,
    parent_resources: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
) -> Run:
    """Record a new ``queued`` run for ``notebook`` and hand it to its compute target.

    ``run_id`` may be given when the caller already prepared files in the run's job folder
    (``%%train`` writes the carried names there first); ``fields`` are more columns of the
    run (a sweep's trial sets ``sweep_id`` and ``trial_number``).
    """
    from ..compute import get_target

    if timeout is not None and timeout <= 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout}")
    compute = get_target(target)
    compute.validate(gpus)
    run_id = run_id or new_run_id()
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
            target=target,
            gpus=gpus,
            parent_resources=parent_resources,
        )
        spec.save(folder / "job.json")
        ws.store.create_run(
            run_id, name, experiment, status="queued", kind=kind, source=source,
            target=target, params=spec.parameters, tags=dict(tags or {}),
            parent_id=parent_id, resources=resources, **(fields or {}),
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    compute.submit(ws, run_id)
    return Run(ws, run_id)


def submit_cell(
    code: str,
    *,
    namespace: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    name: str,
    experiment: str = "Default",
    tags: dict[str, Any] | None = None,
    target: str = "local",
    gpus: int = 0,
    outputs: list[str] | None = None,
    timeout: float | None = None,
    datasets: list[dict[str, str]] | None = None,
    history: list[str] | None = None,
    origin: str = "",
    max_carry_bytes: int = DEFAULT_MAX_CARRY_BYTES,
    ws: Workspace | None = None,
) -> Run:
    """Submit a notebook cell as a job: carry the names it reads, run it, keep its history.

    Nothing is recorded when the cell cannot be submitted (syntax error, a name that cannot
    travel, too much data, an impossible GPU request): the error says what to change.
    """
    from ..compute import get_target
    from ..tracking import current_run
    from ..workspace import workspace

    parameters = dict(parameters or {})
    outputs = list(outputs or [])
    get_target(target).validate(gpus)
    used = [n for n in free_names(code) if n not in parameters]
    never_bound = [n for n in outputs if n not in bound_names(code) and n not in namespace
                   and n not in parameters]
    if never_bound:
        raise InvalidInput(f"--outputs names {', '.join(map(repr, never_bound))}, which the "
                           "cell never assigns")
    ws = ws or workspace()
    if datasets:  # refuse unknown ones now; "latest" means the newest at submission
        from ..registry import pin_datasets

        datasets = pin_datasets(ws, datasets)
    run_id = new_run_id()
    folder = job_dir(ws, run_id)
    try:
        plan = carry(used, namespace, folder / CARRIED_DIR, max_carry_bytes)
        notebook = build_job_notebook(code, parameters, plan, outputs, origin)
        parent = current_run()
        # Inside a headless job the parent only waits for this child: lend it its slots
        # (queueing behind them would deadlock with a single slot).
        lend = parent is not None and os.environ.get("JUPYTER_MLOPS_HEADLESS") == "1"
        run = submit_notebook(
            ws, notebook, name=name, experiment=experiment, parameters=parameters, tags=tags,
            kind="cell", source=origin, cwd=os.getcwd(), timeout=timeout, target=target,
            gpus=gpus, run_id=run_id, parent_id=parent.id if parent else None,
            resources={"datasets": datasets} if datasets else None,
            headless=True,
            parent_resources=(parent.info()["resources"] or {}) if lend else None,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if history:
        text = "\n\n".join(f"# In[{i}]\n{src}" for i, src in enumerate(history, 1))
        size, digest = ws.artifacts.put_bytes(run.id, "history.py", text.encode())
        ws.store.record_artifact(run.id, "history.py", size, digest)
    return run


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
