"""``%mlops models`` / ``%mlops datasets``: the registry in a notebook.

No argument: a table of every version (a DataFrame: HTML in a notebook, text elsewhere).
``NAME``: the versions of that model or dataset. ``NAME:VERSION``: that version, which shows
itself (a model with its lineage tree, a dataset with its profile).
"""

from __future__ import annotations

from typing import Any


def registry_view(ws: Any, what: str, ref: str | None) -> Any:
    registry = ws.models if what == "models" else ws.datasets
    if ref is not None and ":" in ref:
        found = registry.get(ref)
        if what == "models":
            from IPython.display import display

            display(found)
            return found.lineage()
        return found
    if ref is not None:
        registry.get(ref)  # an unknown name: say so, with the names there are
    frame = registry.dataframe(ref)
    if not len(frame):
        print(f"no {what} registered yet in {ws.location.directory}")
        return None
    return frame
