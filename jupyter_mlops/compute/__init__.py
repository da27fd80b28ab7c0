"""Compute targets: where a run's job process runs, and the slots (GPUs, CPU) it holds.

``local`` is built in; other targets (Ray, for more than one machine) are plugins found under
the ``jupyter_mlops.targets`` entry-point group, loaded only when asked for by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from ._base import Claim, ClaimCanceled, Slot, SlotState, Target
from .local import LocalTarget

if TYPE_CHECKING:
    from traitlets.config import Config

__all__ = [
    "ENTRY_POINT_GROUP",
    "Claim",
    "ClaimCanceled",
    "LocalTarget",
    "Slot",
    "SlotState",
    "Target",
    "get_target",
]

ENTRY_POINT_GROUP = "jupyter_mlops.targets"


def get_target(name: str = "local", config: Config | None = None) -> Target:
    """The target called ``name``, configured from ``config`` or, by default, from
    ``jupyter_mlops_config.py`` (as the workspace is), so every process agrees on slots."""
    if config is None:
        from ..store import load_file_config

        config = load_file_config()
    if name == LocalTarget.name:
        return LocalTarget(config=config)
    # Plugins are looked up only now: importing one (e.g. ray) can take seconds.
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
    known = sorted({LocalTarget.name, *(ep.name for ep in found)})
    raise InvalidInput(f"unknown target {name!r}; known targets: {', '.join(known)}")
