"""A job's instructions: what notebook to execute, with what, where.

Everything a job needs is kept in the workspace, not only on the submitting machine: the
spec (``job/spec.json``), the input notebook (``job/input.ipynb``) and the carried names
(``job/carried/*.pkl``, or for a sweep's trial its sweep's ``carried/*.pkl``, stored once)
are files of the run in the artifact store (not listed among its
artifacts: they are its inputs, not its results). The job process fetches them into its
local staging folder (``Backend.staging_dir``) when they are not there already, so any
machine that reaches the workspace can run the job; the folder is removed when the run ends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..store import Backend

JOB_PREFIX = "job/"  # artifacts under this prefix are the job's inputs
SPEC = "job/spec.json"
INPUT_NOTEBOOK = "job/input.ipynb"
CARRIED_PREFIX = "job/carried/"


@dataclass
class JobSpec:
    run_id: str
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
    carried: list[str] = field(default_factory=list)  # names stored under job/carried/
    # A sweep's trial shares its sweep's carried names, stored once for all its trials under
    # the sweep's files (``carried/<name>.pkl`` of area "sweeps") instead of job/carried/.
    carried_sweep: str | None = None

    def save(self, backend: Backend) -> None:
        backend.artifacts.put_bytes(self.run_id, SPEC, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, backend: Backend, run_id: str) -> JobSpec:
        with backend.artifacts.open(run_id, SPEC) as handle:
            return cls(**json.loads(handle.read()))


def store_inputs(backend: Backend, run_id: str, folder: Path, carried: list[str]) -> None:
    """Keep the job's input notebook and its ``carried`` names (files of ``folder``) as
    artifacts."""
    files = [folder / "input.ipynb", *(folder / "carried" / f"{n}.pkl" for n in carried)]
    for path in files:
        if path.is_file():
            backend.artifacts.put_file(run_id, JOB_PREFIX + path.relative_to(folder).as_posix(),
                                       path)


def fetch_inputs(backend: Backend, spec: JobSpec) -> Path:
    """The local staging folder of the job with its input notebook and carried names,
    fetched from the artifact store unless they are already here (same machine)."""
    folder = backend.staging_dir(spec.run_id)
    wanted = {INPUT_NOTEBOOK: folder / "input.ipynb"}
    for rel, local in wanted.items():
        if not local.exists():
            backend.artifacts.download(spec.run_id, rel, local)
    for name in spec.carried:
        local = folder / "carried" / f"{name}.pkl"
        if not local.exists():
            backend.artifacts.download(*carried_key(spec, name), local, area=carried_area(spec))
    return folder


def carried_area(spec: JobSpec) -> str:
    return "sweeps" if spec.carried_sweep else "runs"


def carried_key(spec: JobSpec, name: str) -> tuple[str, str]:
    """(owner id, path) of a carried name in the artifact store (see ``carried_area``)."""
    if spec.carried_sweep:
        return spec.carried_sweep, f"carried/{name}.pkl"
    return spec.run_id, f"{CARRIED_PREFIX}{name}.pkl"
