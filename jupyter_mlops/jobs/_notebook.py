"""Job notebooks as plain JSON, built and written without importing nbformat.

Importing nbformat imports jsonschema, whose format checkers compile grammars when they are
imported: most of a second here. A notebook kernel would pay it at its first ``%%train`` or
``%sweep``, ahead of a warm start of 55 ms. What is written here is what nbformat writes for
version 4.5 (cells with ids; sorted keys, one-space indents, UTF-8); papermill reads and
validates it in the job process, which has nbformat imported already.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any


def new_notebook(cells: list[dict[str, Any]], metadata: dict[str, Any]) -> dict[str, Any]:
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def code_cell(source: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "id": _cell_id(),
            "metadata": metadata or {}, "outputs": [], "source": source}


def markdown_cell(source: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": _cell_id(), "metadata": {}, "source": source}


def _cell_id() -> str:
    return uuid.uuid4().hex[:8]  # nbformat's own form of a cell id


def write_notebook(notebook: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a notebook (ours, or one nbformat read and validated) as nbformat does."""
    text = json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def read_notebook_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A notebook this package wrote (``write_notebook``), as plain JSON."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
