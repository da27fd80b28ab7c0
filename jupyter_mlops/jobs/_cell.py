"""Turning a notebook cell into a job notebook, and carrying names to and from the job.

A ``%%train`` cell reads names the notebook defined earlier (imports, helper functions, data).
Which ones is decided statically from the cell's code: a name is carried when the cell reads
it before binding it. Modules travel as import statements (``import numpy as np`` stays
``np``); everything else travels by value with cloudpickle (functions and classes defined in
the notebook included). The analysis is an approximation of Python's rules — a name bound
only inside an ``if`` counts as bound — chosen to err towards carrying less, since a carried
name that the job would have overwritten can still fail the submission (an open file).
"""

from __future__ import annotations

import ast
import builtins
import io
import os
import symtable
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._format import human_bytes
from ..errors import InvalidInput, MlopsError
from ..store import ENV_JOB_DIR

CARRIED_DIR = "carried"
RETURNED_PREFIX = "returned/"
DEFAULT_MAX_CARRY_BYTES = 1 << 30
# Names IPython puts in every namespace; never user data.
IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "display"}


class CarryError(MlopsError):
    """Names the cell uses cannot be sent to the job (unpicklable, or too big)."""


# -- which names does the cell read from the notebook? --------------------------------------


class _OrderedNames(ast.NodeVisitor):
    """Walks top-level code in evaluation order, noting names read before being bound."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.free: list[str] = []

    def _load(self, name: str) -> None:
        if name not in self.bound and name not in self.free:
            self.free.append(name)

    def _bind_target(self, target: ast.AST) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.bound.add(node.id)
            elif isinstance(node, (ast.Attribute, ast.Subscript)):
                self.visit(node)  # ``x.attr = 1`` and ``x[0] = 1`` read x
            elif isinstance(node, ast.Starred):
                continue

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bound.add(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._bind_target(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._bind_target(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
            self.bound.add(node.target.id)
        else:
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bound.add(node.target.id)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self._bind_target(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind_target(item.optional_vars)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.add(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bound.add((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Global(self, node: ast.Global) -> None:
        pass

    # Nested scopes: their reads of globals are collected with symtable, see free_names.
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        self.bound.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self.bound.add(node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)

    def _visit_comprehension(self, node: Any) -> None:
        # The first iterable is evaluated in the enclosing scope; the rest is its own scope.
        self.visit(node.generators[0].iter)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comprehension


def _nested_globals(table: symtable.SymbolTable) -> set[str]:
    """Global names read inside functions, classes, lambdas and comprehensions."""
    found: set[str] = set()
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_referenced() and (sym.is_global() or sym.is_free()) and not sym.is_local():
                found.add(sym.get_name())
        found |= _nested_globals(child)
    return found


def free_names(code: str) -> list[str]:
    """Names the cell reads from its enclosing namespace, in order of first use."""
    try:
        tree = ast.parse(code)
        table = symtable.symtable(code, "<cell>", "exec")
    except SyntaxError as exc:
        raise InvalidInput(f"the cell has a syntax error: {exc.msg} (line {exc.lineno})") from None
    walker = _OrderedNames()
    for stmt in tree.body:
        walker.visit(stmt)
    top_level_bound = {s.get_name() for s in table.get_symbols() if s.is_assigned()
                       or s.is_imported()}
    names = list(walker.free)
    # A function may run later in the cell, after the name is bound: carry it only when the
    # cell never binds it at top level.
    names += sorted(n for n in _nested_globals(table) - top_level_bound if n not in names)
    return names


def bound_names(code: str) -> set[str]:
    """Names the cell binds at top level (assignments, imports, defs)."""
    table = symtable.symtable(code, "<cell>", "exec")
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


# -- carrying values -----------------------------------------------------------------------


@dataclass
class CarryPlan:
    imports: list[str] = field(default_factory=list)  # "import numpy as np"
    values: dict[str, int] = field(default_factory=dict)  # name -> pickled size in bytes
    missing: list[str] = field(default_factory=list)  # read by the cell, not in the notebook


def _import_line(name: str, module: types.ModuleType) -> str:
    full = module.__name__
    if full == name:
        return f"import {full}"
    if "." not in full:
        return f"import {full} as {name}"
    parent, _, leaf = full.rpartition(".")
    return f"from {parent} import {leaf} as {name}" if leaf != name else f"from {parent} import {leaf}"


class _CountingFile:
    """Writes through to a file while counting, and stops once a budget is exceeded."""

    def __init__(self, handle: Any, budget: int):
        self.handle, self.budget, self.size = handle, budget, 0

    def write(self, data: Any) -> int:
        self.size += memoryview(data).nbytes  # protocol 5 hands over PickleBuffers too
        if self.size > self.budget:
            raise _TooBig(self.size)
        return self.handle.write(data)


class _TooBig(Exception):
    def __init__(self, size: int):
        self.size = size


def _why_unpicklable(value: Any, exc: BaseException) -> str:
    kind = type(value).__name__
    hints = {
        "TextIOWrapper": "an open file",
        "BufferedReader": "an open file",
        "BufferedWriter": "an open file",
        "generator": "a generator",
        "lock": "a lock",
        "RLock": "a lock",
        "socket": "a socket",
        "Thread": "a thread",
    }
    what = hints.get(kind, f"a {type(value).__module__}.{kind}")
    return f"{what} cannot be sent to another process ({exc}); create it inside the cell"


def carry(
    names: Iterable[str],
    namespace: Mapping[str, Any],
    dest: Path,
    max_bytes: int = DEFAULT_MAX_CARRY_BYTES,
) -> CarryPlan:
    """Write the values of ``names`` from ``namespace`` under ``dest``; say how to restore.

    Raises ``CarryError`` listing every name that cannot travel, and why, or the sizes when
    the total is over ``max_bytes``. Files are written one per name, streamed, so a value over
    the budget is abandoned as soon as the budget is crossed rather than built in memory.
    """
    import cloudpickle

    plan = CarryPlan()
    problems: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    sizes: dict[str, str] = {}
    for name in names:
        if name in IPYTHON_NAMES or (name.startswith("_") and name.lstrip("_").isdigit()):
            continue
        if name not in namespace:
            if not hasattr(builtins, name):
                plan.missing.append(name)
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            plan.imports.append(_import_line(name, value))
            continue
        if isinstance(value, io.IOBase):
            # cloudpickle would silently copy a read-mode file's contents: refuse instead.
            problems.append(f"  {name}: an open file cannot be sent to another process; "
                            "open it inside the cell")
            continue
        path = dest / f"{name}.pkl"
        try:
            with open(path, "wb") as handle:
                counter = _CountingFile(handle, max(max_bytes - total, 0))
                cloudpickle.dump(value, counter, protocol=5)
        except _TooBig as big:
            sizes[name] = f"over {human_bytes(big.size)}"
            total = max_bytes + 1
            path.unlink(missing_ok=True)
            continue
        except Exception as exc:
            path.unlink(missing_ok=True)
            problems.append(f"  {name}: {_why_unpicklable(value, exc)}")
            continue
        total += counter.size
        plan.values[name] = counter.size
        sizes[name] = human_bytes(counter.size)
    if problems:
        raise CarryError("these names the cell uses cannot be carried to the job:\n"
                         + "\n".join(problems))
    if total > max_bytes:
        listed = "\n".join(f"  {n}: {s}" for n, s in sizes.items())
        raise CarryError(
            f"the data the cell uses is over the {human_bytes(max_bytes)} limit for carried "
            f"names:\n{listed}\nload big data inside the cell (or register it as a dataset), "
            "or raise TrainConfig.max_carry_bytes"
        )
    return plan


def restore_carried(namespace: dict[str, Any], names: list[str]) -> None:
    """In the job kernel: load the carried values into the job's globals."""
    import cloudpickle

    folder = Path(os.environ[ENV_JOB_DIR]) / CARRIED_DIR
    for name in names:
        with open(folder / f"{name}.pkl", "rb") as handle:
            namespace[name] = cloudpickle.load(handle)


def save_outputs(namespace: dict[str, Any], names: list[str],
                 max_bytes: int = DEFAULT_MAX_CARRY_BYTES) -> None:
    """In the job kernel: store the ``--outputs`` names as artifacts of the run."""
    import io

    import cloudpickle

    from ..store import ENV_RUN_ID, Backend

    missing = [n for n in names if n not in namespace]
    if missing:
        raise NameError(
            f"--outputs asked for {', '.join(map(repr, missing))}, which the cell did not define"
        )
    backend, run_id = Backend.open(), os.environ[ENV_RUN_ID]  # set by the job runner
    for name in names:
        data = cloudpickle.dumps(namespace[name], protocol=5)
        if len(data) > max_bytes:
            raise CarryError(f"output {name!r} is {human_bytes(len(data))}, over the "
                             f"{human_bytes(max_bytes)} limit; write it to mlops.outputs_dir()")
        path = f"{RETURNED_PREFIX}{name}.pkl"
        size, digest = backend.artifacts.put_stream(run_id, path, io.BytesIO(data))
        backend.store.record_artifact(run_id, path, size, digest)


# -- the job notebook ----------------------------------------------------------------------


def build_job_notebook(
    code: str,
    parameters: Mapping[str, Any],
    plan: CarryPlan,
    outputs: list[str],
    origin: str = "",
) -> dict[str, Any]:
    """parameters cell (papermill's tag) → restore carried names → the cell → save outputs,
    as plain JSON (``_notebook``: no nbformat import, in the notebook's kernel)."""
    from ._notebook import code_cell as new_code_cell
    from ._notebook import markdown_cell as new_markdown_cell
    from ._notebook import new_notebook

    cells = [new_markdown_cell(f"Job built by `%%train` from {origin or 'a notebook cell'}.")]
    params_src = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    cells.append(new_code_cell(params_src or "# no parameters",
                               metadata={"tags": ["parameters"]}))
    restore = [*plan.imports]
    if plan.values:
        restore.append("from jupyter_mlops.jobs import restore_carried")
        restore.append(f"restore_carried(globals(), {sorted(plan.values)!r})")
    cells.append(new_code_cell("# names carried from the notebook\n" + "\n".join(restore),
                               metadata={"tags": ["mlops-restore"]}))
    cells.append(new_code_cell(code, metadata={"tags": ["mlops-cell"]}))
    if outputs:
        cells.append(new_code_cell(
            "from jupyter_mlops.jobs import save_outputs\n"
            f"save_outputs(globals(), {outputs!r})", metadata={"tags": ["mlops-outputs"]}))
    return new_notebook(
        cells=cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
