"""Names of a package imported on first use (PEP 562): ``import jupyter_mlops`` in a job's
kernel, and opening a workspace, must not pay for parts they never touch (nbformat,
papermill, Optuna, the registry's file handling)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from its submodule
    ``where[name]`` on first use, then keeps it in the package like a normal import."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
