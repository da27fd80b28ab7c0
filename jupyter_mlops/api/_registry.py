"""The registry as the facade hands it out: model and dataset versions linked to ``Run``s.

The registry services (``jupyter_mlops.registry``) know runs only by id; these subclasses
add the links a user follows (``model.run``, ``dataset.runs()``), so that no service needs
the facade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import registry
from ._run import Run

if TYPE_CHECKING:
    from ._workspace import Workspace


class Model(registry.Model):
    """One registered version of a model (see ``registry.Model``), with ``run``."""

    def __init__(self, workspace: Workspace, row: dict[str, Any]):
        super().__init__(workspace.backend, row)
        self.workspace = workspace

    @property
    def run(self) -> Run | None:
        """The run that produced this version, if it was registered from one."""
        return Run(self.workspace, self.run_id) if self.run_id else None


class ModelRegistry(registry.ModelRegistry):
    """``ws.models``: register, list, get, label and delete model versions."""

    def __init__(self, workspace: Workspace):
        super().__init__(workspace.backend)
        self.workspace = workspace

    def _version(self, row: dict[str, Any]) -> Model:
        return Model(self.workspace, row)


class Dataset(registry.Dataset):
    """One version of a dataset (see ``registry.Dataset``), with ``runs()``."""

    def __init__(self, workspace: Workspace, row: dict[str, Any]):
        super().__init__(workspace.backend, row)
        self.workspace = workspace

    def runs(self) -> list[Run]:
        """The runs that read this version."""
        return [Run(self.workspace, run_id) for run_id in self.run_ids()]


class DatasetRegistry(registry.DatasetRegistry):
    """``ws.datasets``: register, list and get dataset versions."""

    def __init__(self, workspace: Workspace):
        super().__init__(workspace.backend)
        self.workspace = workspace

    def _version(self, row: dict[str, Any]) -> Dataset:
        return Dataset(self.workspace, row)
