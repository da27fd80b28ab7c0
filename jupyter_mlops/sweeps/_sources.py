"""Where a sweep's code comes from: a cell, an earlier ``%%train`` run, or a notebook."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, NotFound
from ..store import Backend


def sweep_source(backend: Backend, code_or_notebook: Any, *, from_run: str | None,
                 namespace: dict[str, Any] | None, swept: list[str], fixed: dict[str, Any]
                 ) -> tuple[dict[str, Any], Path | None, str, str | None]:
    """(base notebook, a temporary folder of carried names or None, description, working
    directory). The caller removes the carried folder's parent once the sweep has it."""
    from ..jobs import JobSpec, read_notebook
    from ..jobs._cell import build_job_notebook, carry, free_names
    from ..jobs._spec import INPUT_NOTEBOOK, SPEC, carried_area, carried_key

    if from_run is not None:  # a run id: its job's input notebook and carried names
        artifacts = backend.artifacts
        name = INPUT_NOTEBOOK if artifacts.exists(from_run, INPUT_NOTEBOOK) else "notebook.ipynb"
        if not artifacts.exists(from_run, name):
            raise NotFound(f"run {from_run} kept no notebook to sweep over")
        import nbformat  # a notebook written by another version, perhaps: convert it

        with artifacts.open(from_run, name) as handle:
            nb = nbformat.read(handle, as_version=4)
        _check_swept_names(nb, swept, f"run {from_run}")
        job = JobSpec.load(backend, from_run) if artifacts.exists(from_run, SPEC) else None
        if job is None or not job.carried:
            return nb, None, f"run {from_run}", os.getcwd()
        staging = Path(tempfile.mkdtemp(prefix="sweep-", dir=_staging(backend)))
        for value in job.carried:  # the run's own, or its sweep's when it was a trial
            artifacts.download(*carried_key(job, value), staging / "carried" / f"{value}.pkl",
                               area=carried_area(job))
        return nb, staging / "carried", f"run {from_run}", os.getcwd()
    if code_or_notebook is None:
        raise InvalidInput("a sweep needs code: a cell, a notebook, or from_run=RUN")
    if isinstance(code_or_notebook, dict) and "cells" in code_or_notebook:  # a notebook
        return code_or_notebook, None, "notebook", os.getcwd()
    text = str(code_or_notebook)
    if text.endswith(".ipynb") and "\n" not in text:
        path = Path(text).resolve()
        nb = read_notebook(path)
        _check_swept_names(nb, swept, str(path))
        return nb, None, str(path), str(path.parent)
    # A cell: carry what it reads, except the swept and fixed parameters.
    parameters = {**{name: None for name in swept}, **fixed}
    used = [n for n in free_names(text) if n not in parameters]
    staging = Path(tempfile.mkdtemp(prefix="sweep-", dir=_staging(backend)))
    plan = carry(used, namespace or {}, staging / "carried")
    nb = build_job_notebook(text, parameters, plan, [], "a %%sweep cell")
    return nb, staging / "carried", "cell", os.getcwd()


def _staging(backend: Backend) -> Path:
    folder = backend.location.directory / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_swept_names(nb: dict[str, Any], swept: list[str], where: str) -> None:
    """Papermill injects values after the ``parameters`` cell; without one they'd be lost."""
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise InvalidInput(f"{where} has no cell tagged 'parameters': tag the cell that sets "
                           f"{', '.join(swept)} so each trial's values can be injected")
