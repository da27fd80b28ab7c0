"""A job's instructions: what notebook to execute, with what, where. Kept beside the run.

The spec is written once at submission into the run's staging folder and read by the job
process; the database holds what readers need (status, params, progress), the spec holds
what only the job needs (paths, kernel, timeout, environment).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..workspace import Workspace


@dataclass
class JobSpec:
    run_id: str
    notebook: str  # the notebook to execute (a copy in the staging folder)
    parameters: dict[str, Any] = field(default_factory=dict)
    kernel_name: str | None = None
    cwd: str | None = None
    timeout: float | None = None  # seconds for the whole run; None: no limit
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES
    headless: bool = True
    target: str = "local"
    gpus: int = 0  # GPU slots to claim; 0 claims one CPU slot
    # A job submitted by a job that waits for it (``%%train`` in a notebook run headless)
    # runs on its parent's slots instead of queueing behind them: {"slots", "cuda_visible_devices"}
    parent_resources: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        return cls(**json.loads(path.read_text()))


def job_dir(ws: Workspace, run_id: str) -> Path:
    """The run's local staging folder: spec, input notebook, outputs, runner log."""
    return ws.location.directory / "staging" / run_id
