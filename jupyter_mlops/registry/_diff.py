"""``jupyter mlops runs diff A B``: what differs between two runs — params, metrics,
environment (python, platform, GPUs), packages, dataset versions and code.

The code of a run is its snapshot: for a ``%%train`` run the cell that ran (the job
notebook's ``mlops-cell`` cell), for a notebook run the code cells of the executed notebook
(minus the parameters papermill injected: those are compared as params), else the
notebook history kept with the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..store import RegistryStore

if TYPE_CHECKING:
    from ..store import Backend

__all__ = ["RunDiff", "code_snapshot", "diff_runs"]

MISSING = "—"
ENV_KEYS = ("python", "platform", "machine", "gpus", "cuda_visible_devices")


def code_snapshot(backend: Backend, run_id: str) -> str:
    """The code a run executed, as text ("" when none was kept)."""
    artifacts = {a["path"] for a in backend.store.artifacts(run_id)}
    if "notebook.ipynb" in artifacts:
        with backend.artifacts.open(run_id, "notebook.ipynb") as handle:
            try:
                notebook = json.load(handle)
            except ValueError:
                notebook = {"cells": []}
        cells = [c for c in notebook.get("cells", []) if c.get("cell_type") == "code"]
        tagged = [c for c in cells if "mlops-cell" in c.get("metadata", {}).get("tags", [])]
        skip = {"parameters", "injected-parameters", "mlops-restore", "mlops-outputs"}
        chosen = tagged or [c for c in cells
                            if not skip & set(c.get("metadata", {}).get("tags", []))]
        return "\n\n".join(_source(c) for c in chosen).rstrip() + "\n"
    if "history.py" in artifacts:
        with backend.artifacts.open(run_id, "history.py") as handle:
            return handle.read().decode("utf-8", "replace")
    return ""


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@dataclass
class RunDiff:
    """Differences between run ``a`` and run ``b``; each list holds (key, a, b)."""

    a: dict[str, str]
    b: dict[str, str]
    params: list[tuple[str, Any, Any]] = field(default_factory=list)
    metrics: list[tuple[str, Any, Any]] = field(default_factory=list)
    environment: list[tuple[str, Any, Any]] = field(default_factory=list)
    packages: list[tuple[str, Any, Any]] = field(default_factory=list)
    datasets: list[tuple[str, Any, Any]] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # unified diff lines
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.params or self.metrics or self.environment or self.packages
                    or self.datasets or self.code)

    def to_dict(self) -> dict[str, Any]:
        def rows(items: list[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
            return [{"key": k, "a": a, "b": b} for k, a, b in items]

        return {"a": self.a, "b": self.b, "params": rows(self.params),
                "metrics": rows(self.metrics), "environment": rows(self.environment),
                "packages": rows(self.packages), "datasets": rows(self.datasets),
                "code": "\n".join(self.code), "notes": self.notes}

    def text(self) -> str:
        a, b = self.a, self.b
        out = [f"A: run {a['name']} ({a['id']})", f"B: run {b['name']} ({b['id']})"]
        for title, items in (("params", self.params), ("metrics (latest)", self.metrics),
                             ("environment", self.environment), ("datasets", self.datasets),
                             ("packages", self.packages)):
            out.append("")
            if not items:
                out.append(f"{title}: same")
                continue
            out.append(f"{title}:")
            width = max(len(k) for k, _, _ in items)
            for key, va, vb in items:
                out.append(f"  {key.ljust(width)}  {_fmt(va)}  →  {_fmt(vb)}")
        out.append("")
        if self.code:
            out.append("code:")
            out.extend("  " + line for line in self.code)
        else:
            out.append("code: same")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())


def _fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys if not _same(a.get(k), b.get(k))]


def diff_runs(backend: Backend, run_a: str, run_b: str) -> RunDiff:
    """Compare two runs (ids, names or unique prefixes)."""
    row_a, row_b = backend.find_run(run_a), backend.find_run(run_b)
    a, b = row_a["id"], row_b["id"]
    result = RunDiff(a={"id": a, "name": row_a["name"]}, b={"id": b, "name": row_b["name"]})
    result.params = _compare(row_a["params"] or {}, row_b["params"] or {})
    latest = backend.store.latest_metrics_many([a, b])
    result.metrics = _compare(latest[a], latest[b])

    env_a, env_b = row_a["environment"] or {}, row_b["environment"] or {}
    for run_id, env in ((a, env_a), (b, env_b)):
        if not env:
            result.notes.append(f"run {run_id} has no recorded environment")
    result.environment = _compare({k: env_a.get(k) for k in ENV_KEYS if k in env_a},
                                  {k: env_b.get(k) for k in ENV_KEYS if k in env_b})
    if env_a and env_b:
        result.packages = _compare(env_a.get("packages") or {}, env_b.get("packages") or {})

    registry = RegistryStore(backend.store)
    inputs_a = {d["name"]: f"{d['name']}:{d['version']}" for d in registry.run_inputs(a)}
    inputs_b = {d["name"]: f"{d['name']}:{d['version']}" for d in registry.run_inputs(b)}
    result.datasets = _compare(inputs_a, inputs_b)

    import difflib

    code_a, code_b = code_snapshot(backend, a), code_snapshot(backend, b)
    if not code_a and not code_b:
        result.notes.append("neither run kept a code snapshot")
    result.code = [line.rstrip("\n") for line in difflib.unified_diff(
        code_a.splitlines(keepends=True), code_b.splitlines(keepends=True),
        fromfile=f"A {a}", tofile=f"B {b}", n=2)]
    return result

