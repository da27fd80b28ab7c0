"""Where the workspace lives, and the traitlets configuration that can override it.

Resolution order (DESIGN.md): ``JUPYTER_MLOPS_WORKSPACE`` (a directory) or a configured
database URL, then the nearest ``.mlops/`` folder walking up from the current directory (as
git finds ``.git``), else ``./.mlops/``, created on first write. Jobs get the resolved
location explicitly through the environment (``WorkspaceLocation.to_env``), never by
re-resolving it from their own working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from traitlets import Float, Unicode
from traitlets.config import Configurable

ENV_WORKSPACE = "JUPYTER_MLOPS_WORKSPACE"
ENV_DATABASE_URL = "JUPYTER_MLOPS_DATABASE_URL"
ENV_ARTIFACT_URL = "JUPYTER_MLOPS_ARTIFACT_URL"
DIR_NAME = ".mlops"


class WorkspaceConfig(Configurable):
    """Settable in ``jupyter_mlops_config.py`` or ``jupyter_server_config.py``::

        c.WorkspaceConfig.database_url = "postgresql+psycopg://ml@db/mlops"
        c.WorkspaceConfig.artifact_url = "s3://team-bucket/mlops"
    """

    directory = Unicode(
        "", config=True, help="Workspace directory (holds the SQLite database and artifacts)."
    )
    database_url = Unicode(
        "", config=True, help="SQLAlchemy URL of the database; default: SQLite in the directory."
    )
    artifact_url = Unicode(
        "", config=True, help="fsspec URL of the artifact root; default: <directory>/artifacts."
    )
    busy_timeout = Float(
        60.0, config=True, help="Seconds a SQLite writer waits for the lock before failing."
    )
    heartbeat_interval = Float(
        2.0, config=True, help="Seconds between heartbeats of a running job."
    )
    lost_after = Float(
        30.0, config=True,
        help="Seconds without a heartbeat after which a running job counts as lost.",
    )


@dataclass(frozen=True)
class WorkspaceLocation:
    """A resolved workspace: a local directory (for staging and locks) and two URLs."""

    directory: Path
    database_url: str
    artifact_url: str

    def to_env(self) -> dict[str, str]:
        """Environment variables that make a child process open this same workspace."""
        return {
            ENV_WORKSPACE: str(self.directory),
            ENV_DATABASE_URL: self.database_url,
            ENV_ARTIFACT_URL: self.artifact_url,
        }


def find_workspace_dir(start: Path | None = None) -> Path:
    """The nearest ``.mlops`` directory at or above ``start``, else ``start/.mlops``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        candidate = folder / DIR_NAME
        if candidate.is_dir():
            return candidate
    return start / DIR_NAME


def _load_file_config() -> WorkspaceConfig:
    """Read ``jupyter_mlops_config.py`` from Jupyter's config path, as Jupyter apps do."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import Config, PyFileConfigLoader

    config = Config()
    for folder in reversed([os.getcwd(), *jupyter_config_path()]):
        path = Path(folder) / "jupyter_mlops_config.py"
        if path.is_file():
            config.merge(PyFileConfigLoader(path.name, str(path.parent)).load_config())
    return WorkspaceConfig(config=config)


def resolve_location(
    directory: str | os.PathLike[str] | None = None, config: WorkspaceConfig | None = None
) -> WorkspaceLocation:
    """Resolve where the workspace is, following the order in the module docstring."""
    config = config or _load_file_config()
    env = os.environ
    if directory is not None:
        folder = Path(directory)
        db_url, art_url = "", ""
    else:
        db_url = env.get(ENV_DATABASE_URL) or config.database_url
        art_url = env.get(ENV_ARTIFACT_URL) or config.artifact_url
        if env.get(ENV_WORKSPACE):
            folder = Path(env[ENV_WORKSPACE])
        elif config.directory:
            folder = Path(config.directory)
        else:
            folder = find_workspace_dir()
    folder = folder.expanduser().resolve()
    return WorkspaceLocation(
        directory=folder,
        database_url=db_url or f"sqlite:///{folder / 'mlops.db'}",
        artifact_url=art_url or str(folder / "artifacts"),
    )
