"""Search spaces written as expressions: ``choice(1e-4, 1e-3)``, ``uniform(0.5, 1.0)``...

Expressions are parsed with ``ast`` and only literal arguments are accepted — user text is
never evaluated. Each parameter knows how to ask an Optuna trial for a value, so samplers
(random, grid, TPE) see real distributions; ``normal`` has no Optuna counterpart and is
sampled as a uniform quantile mapped through the normal's inverse CDF, which keeps TPE's
model meaningful (it learns which quantiles work).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from .._inputs import check_param_name, check_value
from ..errors import InvalidInput

KINDS = {
    "choice": "choice(v1, v2, ...)",
    "uniform": "uniform(low, high)",
    "loguniform": "loguniform(low, high) with 0 < low < high",
    "quniform": "quniform(low, high, q)",
    "randint": "randint(low, high), integers low..high inclusive",
    "normal": "normal(mu, sigma) with sigma > 0",
}


def _fail(name: str, text: str, why: str) -> InvalidInput:
    return InvalidInput(f"--param {name}={text}: {why}. Forms: " + "; ".join(KINDS.values()))


@dataclass(frozen=True)
class Param:
    """One dimension of a search space."""

    name: str
    kind: str
    args: tuple[Any, ...]

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        a = self.args
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(a))
        if self.kind == "uniform":
            return trial.suggest_float(self.name, a[0], a[1])
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, a[0], a[1], log=True)
        if self.kind == "quniform":
            return trial.suggest_float(self.name, a[0], a[1], step=a[2])
        if self.kind == "randint":
            return trial.suggest_int(self.name, a[0], a[1])
        quantile = trial.suggest_float(f"{self.name}__quantile", 1e-6, 1 - 1e-6)
        return NormalDist(a[0], a[1]).inv_cdf(quantile)

    def grid_values(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "randint":
            return list(range(self.args[0], self.args[1] + 1))
        if self.kind == "quniform":
            low, high, q = self.args
            count = math.floor((high - low) / q + 1e-9) + 1
            return [low + i * q for i in range(count)]
        raise InvalidInput(
            f"--sampler grid needs discrete parameters (choice, randint, quniform); "
            f"{self.name} is {self.kind}({', '.join(map(repr, self.args))})"
        )

    def expression(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.args))})"


def parse_param(text: str) -> Param:
    """Parse ``name=expression`` (as given to ``--param``)."""
    name, sep, expr = text.partition("=")
    name, expr = name.strip(), expr.strip()
    if not sep or not name:
        raise InvalidInput(f"--param takes name=expression, e.g. lr=loguniform(1e-4, 1e-1); "
                           f"got {text!r}")
    return parse_expression(name, expr)


def parse_expression(name: str, expr: str) -> Param:
    # A swept name becomes a variable of each trial, as a fixed parameter does: same rules.
    name = check_param_name(name)
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise _fail(name, expr, "not an expression") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _fail(name, expr, "expected a call such as choice(...)")
    kind = node.func.id
    if kind not in KINDS:
        raise _fail(name, expr, f"unknown distribution {kind!r}")
    if node.keywords:
        raise _fail(name, expr, "arguments are positional")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
    except ValueError:
        raise _fail(name, expr, "arguments must be literal values (numbers, strings...)") from None
    return Param(name, kind, _check(name, expr, kind, args))


def _check(name: str, expr: str, kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    def numbers(count: int) -> None:
        if len(args) != count or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
        ):
            raise _fail(name, expr, f"{kind} takes {count} numbers")

    if kind == "choice":
        if not args:
            raise _fail(name, expr, "choice needs at least one value")
        if len(set(map(repr, args))) != len(args):
            raise _fail(name, expr, "choice has repeated values")
        for arg in args:
            check_value(name, arg)  # what a parameter can hold (no b'x', {1, 2}, nan...)
        return args
    if kind in ("uniform", "loguniform", "randint", "normal"):
        numbers(2)
    if kind == "quniform":
        numbers(3)
        if args[2] <= 0:
            raise _fail(name, expr, "q must be positive")
    low, high = args[0], args[1]
    if kind == "normal":
        if high <= 0:
            raise _fail(name, expr, "sigma must be positive")
        return (float(low), float(high))
    if not low < high:
        raise _fail(name, expr, "low must be below high")
    if kind == "loguniform" and low <= 0:
        raise _fail(name, expr, "loguniform needs low > 0")
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise _fail(name, expr, "randint takes integers")
        return (int(low), int(high))
    return tuple(float(a) for a in args)


def parse_space(items: list[str] | dict[str, str]) -> dict[str, Param]:
    """A whole space from ``["lr=uniform(0,1)", ...]`` or ``{"lr": "uniform(0,1)"}``."""
    pairs = items.items() if isinstance(items, dict) else [
        (p.name, p) for p in map(parse_param, items)]
    space: dict[str, Param] = {}
    for name, value in pairs:
        param = value if isinstance(value, Param) else parse_expression(name, str(value))
        if name in space:
            raise InvalidInput(f"--param {name} is given twice")
        space[name] = param
    if not space:
        raise InvalidInput("a sweep needs at least one --param name=expression")
    return space
