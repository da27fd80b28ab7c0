"""Lineage: what made a model version — its run, the run's code snapshot, params,
environment, the dataset versions it read and the sweep it was a trial of.

``backend.lineage(model="mnist:3")`` returns a ``Lineage``; it shows as a small tree in a
notebook (HTML) and in a terminal (text), and ``to_dict()`` gives the same as data.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._format import human_bytes
from ..errors import InvalidInput
from ..store import RegistryStore

if TYPE_CHECKING:
    from ..store import Backend
    from ._models import Model

__all__ = ["Lineage", "lineage"]

CODE_ARTIFACTS = ("notebook.ipynb", "history.py")


@dataclass
class _Node:
    label: str
    children: list[_Node] = field(default_factory=list)


@dataclass
class Lineage:
    """Where a model version (or a run) came from. Fields are plain data."""

    model: dict[str, Any] | None
    run: dict[str, Any] | None
    code: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    parent_run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "run": self.run, "code": self.code, "params": self.params,
            "metrics": self.metrics, "environment": self.environment,
            "datasets": self.datasets, "sweep": self.sweep, "parent_run": self.parent_run,
        }

    # -- the tree -------------------------------------------------------------------------

    def _tree(self) -> _Node:
        run_node = self._run_node()
        if self.model is None:
            return run_node or _Node("(nothing recorded)")
        m = self.model
        label = (f"model {m['ref']}  sha256 {m['sha256'][:12]} · {m['file_count']} "
                 f"file{'s' if m['file_count'] != 1 else ''} · {human_bytes(m['size'])}")
        if m.get("aliases"):
            label += " · " + ", ".join(m["aliases"])
        root = _Node(label)
        if run_node is not None:
            root.children.append(run_node)
        else:
            root.children.append(_Node(f"registered from {m['source']} (no run recorded)"))
        return root

    def _run_node(self) -> _Node | None:
        if self.run is None:
            return None
        r = self.run
        node = _Node(f"run {r['name']} ({r['id']}) · {r['status']} · experiment "
                     f"{r['experiment']}")
        code = self.code
        where = code.get("source") or r["kind"]
        files = ", ".join(code.get("artifacts") or []) or "no code snapshot kept"
        node.children.append(_Node(f"code: {where} → {files}"))
        node.children.append(_Node("params: " + (_pairs(self.params) or "none")))
        if self.metrics:
            node.children.append(_Node("metrics: " + _pairs(self.metrics)))
        env = self.environment
        if env:
            gpus = ", ".join(env.get("gpus") or []) or "none"
            node.children.append(_Node(
                f"environment: python {env.get('python')} · {env.get('platform')} · "
                f"{len(env.get('packages') or {})} packages · GPUs: {gpus}"))
        else:
            node.children.append(_Node("environment: not recorded"))
        data = _Node("datasets" if self.datasets else "datasets: none recorded")
        for d in self.datasets:
            where = "snapshot" if d["copied"] else d["uri"]
            data.children.append(_Node(f"{d['ref']}  sha256 {d['sha256'][:12]} · {where}"))
        node.children.append(data)
        if self.sweep is not None:
            s = self.sweep
            node.children.append(_Node(
                f"sweep {s['name']} ({s['id']}) · trial {s['trial_number']} of {s['trials']} · "
                f"metric {s.get('metric') or '?'} ({s.get('goal') or '?'}) · {s['status']}"))
        if self.parent_run is not None:
            p = self.parent_run
            node.children.append(_Node(f"started by run {p['name']} ({p['id']})"))
        return node

    def text(self) -> str:
        """The tree drawn with box characters, for a terminal."""
        root = self._tree()
        lines = [root.label]

        def walk(node: _Node, prefix: str) -> None:
            for i, child in enumerate(node.children):
                last = i == len(node.children) - 1
                lines.append(f"{prefix}{'└── ' if last else '├── '}{child.label}")
                walk(child, prefix + ("    " if last else "│   "))

        walk(root, "")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        def render(node: _Node) -> str:
            inner = "".join(f"<li>{render(c)}</li>" for c in node.children)
            kids = (f'<ul style="margin:0;padding-left:1.2em;list-style:\'└ \'">{inner}</ul>'
                    if inner else "")
            return f"<span>{html.escape(node.label)}</span>{kids}"

        tree = render(self._tree())
        return f'<div class="mlops-lineage" style="font-family:monospace">{tree}</div>'


def _pairs(values: dict[str, Any], limit: int = 12) -> str:
    shown = []
    for key, value in list(values.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.6g}"
        shown.append(f"{key}={value}")
    more = len(values) - limit
    return ", ".join(shown) + (f", … (+{more})" if more > 0 else "")


def lineage(backend: Backend, model: Model | str | None = None, run: str | None = None
            ) -> Lineage:
    """The lineage of a model version (``"name:version"`` or a ``Model``), or of a run
    (an id, a name or a unique prefix)."""
    from ._models import Model, ModelRegistry

    if (model is None) == (run is None):
        raise InvalidInput("lineage takes model='name:version' or run=RUN (one of them)")
    model_info = None
    run_id = None
    if model is not None:
        found = model if isinstance(model, Model) else ModelRegistry(backend).get(model)
        model_info = found.info()
        run_id = found.run_id
    else:
        run_id = backend.find_run(run)["id"]
    result = Lineage(model=model_info, run=None)
    if run_id is None:
        return result
    registry = RegistryStore(backend.store)
    row = backend.store.get_run_row(run_id)
    if row is None:  # the run was removed after the model was registered
        result.run = {"id": run_id, "name": "?", "status": "missing", "experiment": "?",
                      "kind": "?"}
        return result
    result.run = {k: row[k] for k in ("id", "name", "experiment", "status", "kind", "source",
                                      "target", "created_at", "started_at", "ended_at")}
    artifacts = {a["path"] for a in backend.store.artifacts(run_id)}
    result.code = {
        "kind": row["kind"],
        "source": row["source"],
        "artifacts": [p for p in CODE_ARTIFACTS if p in artifacts],
    }
    result.params = dict(row["params"] or {})
    result.metrics = {k: v["value"] for k, v in backend.store.latest_metrics(run_id).items()}
    result.environment = row["environment"]
    result.datasets = [{
        "name": d["name"], "version": d["version"], "ref": f"{d['name']}:{d['version']}",
        "sha256": d["sha256"], "uri": d["uri"], "copied": d["storage"] is not None,
    } for d in registry.run_inputs(run_id)]
    if row.get("sweep_id"):
        sweep = registry.sweep(row["sweep_id"])
        spec = (sweep or {}).get("spec") or {}
        result.sweep = {
            "id": row["sweep_id"],
            "name": sweep["name"] if sweep else "?",
            "status": sweep["status"] if sweep else "missing",
            "experiment": sweep["experiment"] if sweep else None,
            "metric": spec.get("metric"),
            "goal": spec.get("goal"),
            "trial_number": row.get("trial_number"),
            "trials": spec.get("trials") or registry.sweep_trial_count(row["sweep_id"]),
        }
    if row.get("parent_id"):
        parent = backend.store.get_run_row(row["parent_id"])
        result.parent_run = {"id": row["parent_id"], "name": parent["name"] if parent else "?"}
    return result
