"""Compute targets: where a run's job process runs, and the slots (GPUs, CPU) it holds.

``local`` is built in; ``ray`` (for more than one machine) ships with the package but is
imported only when asked for by name (importing Ray takes seconds); other targets are plugins
found under the ``jupyter_mlops.targets`` entry-point group, loaded the same lazy way.
The default target is ``JUPYTER_MLOPS_TARGET``, else ``c.ComputeConfig.default_target``.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from traitlets import Unicode, default
from traitlets.config import Configurable

from ..errors import InvalidInput
from ._base import Claim, ClaimCanceled, Slot, SlotState, Target
from .local import LocalTarget

if TYPE_CHECKING:
    from traitlets.config import Config

    from ..store import Backend

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_TARGET",
    "Claim",
    "ClaimCanceled",
    "ComputeConfig",
    "LocalTarget",
    "Slot",
    "SlotState",
    "Target",
    "default_target",
    "describe_targets",
    "get_target",
    "local_agent_state",
    "ray_configured",
    "target_names",
]

ENTRY_POINT_GROUP = "jupyter_mlops.targets"
ENV_TARGET = "JUPYTER_MLOPS_TARGET"
# Targets shipped with this package but imported on demand: name -> "module:class".
BUILT_IN = {"ray": "jupyter_mlops.compute.ray:RayTarget"}


class ComputeConfig(Configurable):
    """Which target runs go to when a surface does not say (``--target``)."""

    default_target = Unicode(
        config=True, help=f"Target of runs and sweeps given no --target (default: {ENV_TARGET} "
        "or 'local').")

    @default("default_target")
    def _default_target_default(self) -> str:
        return os.environ.get(ENV_TARGET, "").strip() or LocalTarget.name


def default_target(config: Config | None = None) -> str:
    """The name of the target used when none is given."""
    if config is None:
        from ..store import load_file_config

        config = load_file_config()
    return ComputeConfig(config=config).default_target


def local_agent_state(backend: Backend) -> dict[str, Any] | None:
    """The warm-start agent of this host, if one runs: whether it is busy, and when idle,
    how long until it exits and frees its warm kernels (scale to zero)."""
    from .agent import AgentPaths, ping

    answer = ping(AgentPaths.for_workspace(backend.location.directory))
    if not answer or not answer.get("ok"):
        return None
    warm = sum((answer.get("warm") or {}).values())
    idle, limit = float(answer.get("idle_for", 0.0)), float(answer.get("idle_exit", 0.0))
    busy = idle < 3.0  # BUSY_CHECK: it looked at the store and saw active runs
    state = "busy" if busy else f"idle for {idle:.0f} s, exits in {max(limit - idle, 0):.0f} s"
    forks = answer.get("forkserver")
    how = ("forked" if forks == "up" else "fork server booting" if forks == "booting"
           else "new interpreters" if forks is None else f"new interpreters ({forks})")
    return {"busy": busy, "pid": answer.get("pid"), "warm": warm,
            "detail": f"agent pid {answer.get('pid')}: {warm} warm kernel(s), {how}, {state}"}


def ray_configured(config: Config | None = None) -> bool:
    """Whether a Ray cluster is named (``RAY_ADDRESS`` or ``c.RayTarget.address``): only
    then do the views of targets connect to it (connecting takes seconds, or fails)."""
    if config is None:
        from ..store import load_file_config

        config = load_file_config()
    return bool(os.environ.get("RAY_ADDRESS") or config.get("RayTarget", {}).get("address"))


def describe_targets(backend: Backend) -> list[dict[str, Any]]:
    """What ``targets`` shows: the local slots and the run holding each, this host's agent
    when one runs (busy, or idle and when it exits), and the Ray cluster's nodes (CPUs,
    GPUs in use) and which run runs where, when a cluster is configured or is the default
    target. Rows: ``target, slot, held, run_id`` and, for some, ``detail``."""
    local = get_target(LocalTarget.name)
    rows: list[dict[str, Any]] = [
        {"target": local.name, "slot": s.slot.name, "held": s.held, "run_id": s.run_id}
        for s in local.slots(backend)]
    agent = local_agent_state(backend)
    if agent is not None:
        rows.append({"target": local.name, "slot": "agent", "held": agent["busy"],
                     "run_id": None, "detail": agent["detail"]})
    if default_target() == "ray" or ray_configured():
        try:
            rows.extend(get_target("ray").describe(backend))
        except InvalidInput as exc:  # the local part is still worth showing
            rows.append({"target": "ray", "slot": "cluster", "held": False, "run_id": None,
                         "detail": str(exc)})
    return rows


def target_names() -> list[str]:
    """Every target that can be asked for by name."""
    return sorted({LocalTarget.name, *BUILT_IN,
                   *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def get_target(name: str = "local", config: Config | None = None) -> Target:
    """The target called ``name``, configured from ``config`` or, by default, from
    ``jupyter_mlops_config.py`` (as the workspace is), so every process agrees on slots."""
    if config is None:
        from ..store import load_file_config

        config = load_file_config()
    if name == LocalTarget.name:
        return LocalTarget(config=config)
    # Plugins are looked up only now: importing one (e.g. ray) can take seconds.
    if name in BUILT_IN:
        module, _, cls_name = BUILT_IN[name].partition(":")
        return getattr(import_module(module), cls_name)(config=config)
    found = entry_points(group=ENTRY_POINT_GROUP)
    for ep in found:
        if ep.name == name:
            try:
                cls = ep.load()
            except Exception as exc:
                raise InvalidInput(
                    f"target {name!r} could not be loaded from {ep.value} ({exc}); "
                    "is its package installed?"
                ) from exc
            target = cls(config=config)
            if not isinstance(target, Target):
                raise InvalidInput(f"target {name!r} ({ep.value}) is not a Target")
            return target
    raise InvalidInput(f"unknown target {name!r}; known targets: {', '.join(target_names())}")
