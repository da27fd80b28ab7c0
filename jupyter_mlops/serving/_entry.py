"""Entry scripts: ``init()`` once, then ``run(raw_data)`` per request; and the defaults.

An entry script is a Python file with ``run(raw_data)`` (required) and ``init()`` (optional,
run once before the endpoint is ready, typically loading the model from ``model_dir()``).
When ``--entry`` is omitted, a default is chosen by the model's files (``default_entry``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

ENV_MODEL_DIR = "MLOPS_MODEL_DIR"
ENTRIES = Path(__file__).parent / "entries"


def model_dir() -> Path:
    """The folder holding the served model's files (in an entry script)."""
    folder = os.environ.get(ENV_MODEL_DIR)
    if not folder:
        raise InvalidInput("mlops.model_dir() is for entry scripts of an endpoint "
                           f"(the server sets {ENV_MODEL_DIR})")
    return Path(folder)


def check_entry(source: str, name: str = "entry script") -> None:
    """Refuse, before anything starts, an entry script that cannot serve: a syntax error,
    or no ``run`` function."""
    import ast

    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as exc:
        raise InvalidInput(f"{name} line {exc.lineno}: {exc.msg}") from None
    functions = {node.name for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "run" not in functions:
        raise InvalidInput(f"{name} defines no run(raw_data) function; an entry script has "
                           "init() (optional, loads the model once) and run(raw_data)")


def load_entry(path: str | os.PathLike[str]) -> Callable[[Any], Any]:
    """Import the entry script, call its ``init()``, return its ``run``."""
    spec = importlib.util.spec_from_file_location("mlops_entry", path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"cannot load the entry script {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    init = getattr(module, "init", None)
    if callable(init):
        init()
    run = getattr(module, "run", None)
    if not callable(run):
        raise InvalidInput(f"the entry script {path} has no run(raw_data) function")
    return run


def default_entry(files: list[str], metadata: dict[str, Any]) -> tuple[str, str]:
    """``(name, source)`` of the default entry script for a model made of ``files``
    (paths relative to the model folder), chosen by their kinds."""
    suffixes = {Path(f).suffix.lower() for f in files}
    if ".keras" in suffixes:
        return "keras_entry.py", (ENTRIES / "keras_entry.py").read_text()
    if suffixes & {".pt", ".pth"}:
        return "torch_entry.py", (ENTRIES / "torch_entry.py").read_text()
    if suffixes & {".joblib", ".pkl", ".pickle"}:
        return "sklearn_entry.py", (ENTRIES / "sklearn_entry.py").read_text()
    raise InvalidInput(
        f"no default entry script for a model of files {', '.join(sorted(files)[:5])}: "
        "defaults exist for scikit-learn/joblib (.joblib, .pkl), Keras (.keras) and PyTorch "
        "(.pt, .pth); pass --entry score.py with init() and run(raw_data)")
