"""Where a sweep's code comes from: a cell, an earlier ``%%train`` run, or a notebook."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nbformat

from ..errors import InvalidInput, NotFound
from ..workspace import Workspace


def sweep_source(ws: Workspace, code_or_notebook: Any, *, from_run: str | None,
                 namespace: dict[str, Any] | None, swept: list[str], fixed: dict[str, Any]
                 ) -> tuple[nbformat.NotebookNode, Path | None, str, str | None]:
    """(base notebook, folder of carried names or None, description, working directory)."""
    from ..jobs import job_dir, read_notebook
    from ..jobs._cell import build_job_notebook, carry, free_names

    if from_run is not None:
        run = ws.get_run(from_run)
        folder = job_dir(ws, run.id)
        if (folder / "input.ipynb").exists():
            nb = nbformat.read(folder / "input.ipynb", as_version=4)
        elif any(a["path"] == "notebook.ipynb" for a in run.artifacts()):
            with ws.artifacts.open(run.id, "notebook.ipynb") as handle:
                nb = nbformat.read(handle, as_version=4)
        else:
            raise NotFound(f"run {run.id} kept no notebook to sweep over")
        _check_swept_names(nb, swept, f"run {run.id}")
        carried = folder / "carried"
        return nb, carried if carried.is_dir() else None, f"run {run.id}", os.getcwd()
    if code_or_notebook is None:
        raise InvalidInput("a sweep needs code: a cell, a notebook, or from_run=RUN")
    if isinstance(code_or_notebook, nbformat.NotebookNode):
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
    staging = Path(tempfile.mkdtemp(prefix="sweep-", dir=_staging(ws)))
    plan = carry(used, namespace or {}, staging / "carried")
    nb = build_job_notebook(text, parameters, plan, [], "a %%sweep cell")
    return nb, staging / "carried", "cell", os.getcwd()


def _staging(ws: Workspace) -> Path:
    folder = ws.location.directory / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_swept_names(nb: nbformat.NotebookNode, swept: list[str], where: str) -> None:
    """Papermill injects values after the ``parameters`` cell; without one they'd be lost."""
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise InvalidInput(f"{where} has no cell tagged 'parameters': tag the cell that sets "
                           f"{', '.join(swept)} so each trial's values can be injected")
