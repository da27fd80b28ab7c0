"""Submitting a notebook or a cell as a run: validate, record it ``queued``, start its job.

These are the services behind ``Workspace.submit``; they receive the ``Backend`` and return
the new run's id. Nothing is stored when the input is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .._environment import current_user
from ..errors import InvalidInput
from ..store import ENV_HEADLESS, Backend, new_run_id
from ._cell import (
    CARRIED_DIR,
    DEFAULT_MAX_CARRY_BYTES,
    bound_names,
    build_job_notebook,
    carry,
    free_names,
)
from ._notebook import write_notebook
from ._spec import JobSpec, store_inputs


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """Read and validate a notebook (an ``nbformat.NotebookNode``), with an error that names
    the file and the problem."""
    import nbformat  # here, not at import: a cell's submit never needs it (see _notebook)

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
    backend: Backend,
    notebook: dict[str, Any],
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
    datasets: list[dict[str, Any]] | None = None,
    parent_resources: dict[str, Any] | None = None,
    carried: list[str] | None = None,
    carried_sweep: str | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    """Record a new ``queued`` run for ``notebook`` and hand it to its compute target.

    ``run_id`` may be given when the caller already prepared files in the run's staging
    folder (``submit_cell`` writes the carried names there first); ``fields`` are more
    columns of the run (a sweep's trial sets ``sweep_id`` and ``trial_number``).
    ``datasets`` are ``{"name", "version"}`` inputs, pinned to a version and checked now.
    ``carried`` names (pickles in the staging folder's ``carried/``) are kept as artifacts
    too, so another machine can run the job; a sweep's trials give ``carried_sweep``, the
    sweep that stored them once for all its trials.
    """
    from ..compute import get_target
    from ..registry import pin_datasets

    if timeout is not None and timeout <= 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout}")
    compute = get_target(target)
    compute.validate(gpus)
    pinned = pin_datasets(backend, datasets) if datasets else None
    run_id = run_id or new_run_id()
    folder = backend.staging_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    spec = JobSpec(
        run_id=run_id, parameters=dict(parameters or {}), kernel_name=kernel_name, cwd=cwd,
        timeout=timeout, env=dict(env or {}), headless=headless, target=target, gpus=gpus,
        parent_resources=parent_resources, carried=sorted(carried or []),
        carried_sweep=carried_sweep)
    try:
        write_notebook(notebook, folder / "input.ipynb")
        backend.store.create_run(
            run_id, name, experiment, status="queued", kind=kind, source=source,
            target=target, params=spec.parameters, tags=dict(tags or {}),
            parent_id=parent_id,
            # The submitting user: Run.outputs() loads pickles only from one's own runs.
            resources={"owner": current_user(), **({"datasets": pinned} if pinned else {})},
            **(fields or {}),
        )
        store_inputs(backend, run_id, folder, [] if carried_sweep else spec.carried)
        spec.save(backend)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        backend.store.delete_run(run_id)
        raise
    compute.submit(backend, run_id, gpus=gpus)
    return run_id


def submit_cell(
    backend: Backend,
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
    datasets: list[dict[str, Any]] | None = None,
    history: list[str] | None = None,
    origin: str = "",
    max_carry_bytes: int = DEFAULT_MAX_CARRY_BYTES,
    parent_id: str | None = None,
    kernel_name: str | None = None,
) -> str:
    """Submit a notebook cell as a job: carry the names it reads, run it, keep its history.

    Nothing is recorded when the cell cannot be submitted (syntax error, a name that cannot
    travel, too much data, an impossible GPU request): the error says what to change.
    """
    from ..compute import get_target

    parameters = dict(parameters or {})
    outputs = list(outputs or [])
    get_target(target).validate(gpus)
    used = [n for n in free_names(code) if n not in parameters]
    never_bound = [n for n in outputs if n not in bound_names(code) and n not in namespace
                   and n not in parameters]
    if never_bound:
        raise InvalidInput(f"--outputs names {', '.join(map(repr, never_bound))}, which the "
                           "cell never assigns")
    run_id = new_run_id()
    folder = backend.staging_dir(run_id)
    try:
        plan = carry(used, namespace, folder / CARRIED_DIR, max_carry_bytes)
        notebook = build_job_notebook(code, parameters, plan, outputs, origin)
        # Inside a headless job the parent only waits for this child: lend it its slots
        # (queueing behind them would deadlock with a single slot).
        lend = parent_id is not None and os.environ.get(ENV_HEADLESS) == "1"
        parent_row = backend.store.get_run_row(parent_id) if lend else None
        submit_notebook(
            backend, notebook, name=name, experiment=experiment, parameters=parameters,
            tags=tags, kind="cell", source=origin, cwd=os.getcwd(), timeout=timeout,
            kernel_name=kernel_name, target=target, gpus=gpus, run_id=run_id, parent_id=parent_id,
            datasets=datasets, headless=True, carried=list(plan.values),
            parent_resources=(parent_row["resources"] or {}) if parent_row else None,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if history:
        text = "\n\n".join(f"# In[{i}]\n{src}" for i, src in enumerate(history, 1))
        size, digest = backend.artifacts.put_bytes(run_id, "history.py", text.encode())
        backend.store.record_artifact(run_id, "history.py", size, digest)
    return run_id
