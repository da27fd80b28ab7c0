"""Where the workspace lives, and the traitlets configuration that can override it.

Resolution order (DESIGN.md): ``JUPYTER_MLOPS_WORKSPACE`` (a directory) or a configured
database URL, then the nearest ``.mlops/`` folder walking up from the current directory (as
git finds ``.git``), else ``./.mlops/``, created on first write. Jobs get the resolved
location explicitly through the environment (``WorkspaceLocation.to_env``), never by
re-resolving it from their own working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, TraitError, Unicode, validate
from traitlets.config import Config, Configurable

from ..errors import WorkspaceError

ENV_WORKSPACE = "JUPYTER_MLOPS_WORKSPACE"
ENV_DATABASE_URL = "JUPYTER_MLOPS_DATABASE_URL"
ENV_ARTIFACT_URL = "JUPYTER_MLOPS_ARTIFACT_URL"
# fsspec storage options of the artifact URL, as a JSON object (e.g. an S3 endpoint_url)
ENV_ARTIFACT_OPTIONS = "JUPYTER_MLOPS_ARTIFACT_OPTIONS"
DIR_NAME = ".mlops"

# What a job process is told through its environment (set by the job runner).
ENV_RUN_ID = "JUPYTER_MLOPS_RUN_ID"  # the run this process logs to
ENV_OUTPUTS_DIR = "JUPYTER_MLOPS_OUTPUTS_DIR"  # files here become the run's artifacts
ENV_JOB_DIR = "JUPYTER_MLOPS_JOB_DIR"  # the run's staging folder (carried names, returns)
ENV_SCHEMA_CHECKED = "JUPYTER_MLOPS_SCHEMA_CHECKED"  # "<revision> <database url>": checked
ENV_HEADLESS = "JUPYTER_MLOPS_HEADLESS"  # "1": nobody watches (papermill), so %%train waits
# Written in the job folder by a job's kernel whose last metric points could not be stored;
# the runner then ends the run failed with its reason instead of completed.
UNWRITTEN_FILE = "unwritten-metrics.json"


class WorkspaceConfig(Configurable):
    """Settable in ``jupyter_mlops_config.py`` or ``jupyter_server_config.py``::

        c.WorkspaceConfig.database_url = "postgresql+psycopg://ml@db/mlops"
        c.WorkspaceConfig.artifact_url = "s3://team-bucket/mlops"
        c.WorkspaceConfig.artifact_options = {"endpoint_url": "https://minio.lan:9000"}
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
    artifact_options = Dict(
        config=True,
        help="fsspec storage options for artifact_url (for s3://: endpoint_url, profile, "
        "client_kwargs...). Credentials are better left to the AWS_* environment variables "
        "or ~/.aws, which s3fs reads. JUPYTER_MLOPS_ARTIFACT_OPTIONS (JSON) overrides it.",
    )
    busy_timeout = Float(
        10.0, config=True,
        help="Seconds a writer waits for a lock before failing (SQLite's busy timeout, "
        "PostgreSQL's lock_timeout). Must stay under "
        "lost_after - heartbeat_interval, so that a job waiting on a lock is never taken "
        "for lost.",
    )
    heartbeat_interval = Float(
        2.0, config=True, help="Seconds between heartbeats of a running job."
    )
    lost_after = Float(
        30.0, config=True,
        help="Seconds without a heartbeat after which a running job counts as lost. At "
        "least 3 heartbeats, and longer than busy_timeout + heartbeat_interval.",
    )
    trust_other_users_outputs = Bool(
        False, config=True,
        help="Load the outputs (pickles: loading one runs its code) of runs submitted by other "
        "users of a shared workspace with Run.outputs() and %%train --outputs. Off: only your "
        "own runs' outputs are loaded.",
    )

    @validate("busy_timeout", "heartbeat_interval", "lost_after")
    def _positive(self, proposal: dict) -> float:
        if proposal["value"] <= 0:
            raise TraitError(f"WorkspaceConfig.{proposal['trait'].name} must be positive, "
                             f"got {proposal['value']}")
        return proposal["value"]

    def check_timings(self) -> None:
        """Refuse timings under which a live job could be declared lost.

        A heartbeat is a write; a writer may wait ``busy_timeout`` for the database lock, so
        the gap between two heartbeats can reach ``heartbeat_interval + busy_timeout``.
        """
        gap = self.heartbeat_interval + self.busy_timeout
        if self.lost_after <= gap or self.lost_after < 3 * self.heartbeat_interval:
            raise WorkspaceError(
                f"WorkspaceConfig.lost_after ({self.lost_after:g} s) must exceed busy_timeout "
                f"+ heartbeat_interval ({gap:g} s) and 3 heartbeats "
                f"({3 * self.heartbeat_interval:g} s), or live jobs would be reported lost; "
                "raise lost_after or lower the others in jupyter_mlops_config.py"
            )


@dataclass(frozen=True)
class WorkspaceLocation:
    """A resolved workspace: a local directory (for staging and locks), two URLs and the
    artifact URL's fsspec options (canonical JSON text, so that a location stays hashable)."""

    directory: Path
    database_url: str
    artifact_url: str
    artifact_options: str = ""

    @property
    def storage_options(self) -> dict[str, Any]:
        """The fsspec storage options of ``artifact_url``."""
        return json.loads(self.artifact_options) if self.artifact_options else {}

    def to_env(self) -> dict[str, str]:
        """Environment variables that make a child process (a job, a scoring server, a
        sweep controller, on this machine or another) open this same workspace."""
        return {
            ENV_WORKSPACE: str(self.directory),
            ENV_DATABASE_URL: self.database_url,
            ENV_ARTIFACT_URL: self.artifact_url,
            ENV_ARTIFACT_OPTIONS: self.artifact_options,
        }


def _options_text(env_text: str | None, configured: dict[str, Any]) -> str:
    """The artifact store's options as canonical JSON: the environment's, else the config's."""
    options: Any = configured
    if env_text:
        try:
            options = json.loads(env_text)
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise WorkspaceError(f"{ENV_ARTIFACT_OPTIONS} must be a JSON object of fsspec "
                                 'storage options, such as {"endpoint_url": "http://host:9000"}')
    return json.dumps(options, sort_keys=True) if options else ""


def find_workspace_dir(start: Path | None = None) -> Path:
    """The nearest ``.mlops`` directory at or above ``start``, else ``start/.mlops``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        candidate = folder / DIR_NAME
        if candidate.is_dir():
            return candidate
    return start / DIR_NAME


CONFIG_FILES = ("jupyter_server_config", "jupyter_mlops_config")  # later files win


def load_file_config(here: str | os.PathLike[str] | None = None) -> Config:
    """The traitlets configuration of Jupyter's config path and of ``here`` (default: the
    current folder): ``jupyter_server_config.py``/``.json`` (what the server extension
    reads), then ``jupyter_mlops_config.py``/``.json``; nearer folders and later files win."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    for folder in reversed([os.fspath(here) if here else os.getcwd(), *jupyter_config_path()]):
        for stem in CONFIG_FILES:
            for suffix, loader in ((".json", JSONFileConfigLoader), (".py", PyFileConfigLoader)):
                path = Path(folder) / (stem + suffix)
                if not path.is_file():
                    continue
                try:
                    config.merge(loader(path.name, str(path.parent)).load_config())
                except Exception as exc:
                    raise WorkspaceError(
                        f"cannot read the configuration file {path}: {exc}"
                    ) from None
    return config


def load_config(config: Config | None = None) -> WorkspaceConfig:
    """``WorkspaceConfig`` from ``config`` or, by default, the configuration files; its
    timings checked (``check_timings``)."""
    try:
        settings = WorkspaceConfig(config=load_file_config() if config is None else config)
    except TraitError as exc:
        raise WorkspaceError(f"bad workspace configuration: {exc}") from None
    settings.check_timings()
    return settings


def resolve_location(
    directory: str | os.PathLike[str] | None = None, config: WorkspaceConfig | None = None,
    start: str | os.PathLike[str] | None = None,
) -> WorkspaceLocation:
    """Resolve where the workspace is, following the order in the module docstring; the
    nearest ``.mlops`` is looked for from ``start`` (default: the current directory)."""
    config = config or load_config()
    env = os.environ
    if directory is not None:
        folder = Path(directory)
        db_url, art_url, options = "", "", ""
    else:
        db_url = env.get(ENV_DATABASE_URL) or config.database_url
        art_url = env.get(ENV_ARTIFACT_URL) or config.artifact_url
        options = _options_text(env.get(ENV_ARTIFACT_OPTIONS), dict(config.artifact_options))
        if env.get(ENV_WORKSPACE):
            folder = Path(env[ENV_WORKSPACE])
        elif config.directory:
            folder = Path(config.directory)
        else:
            folder = find_workspace_dir(Path(start) if start is not None else None)
    folder = folder.expanduser().resolve()
    return WorkspaceLocation(
        directory=folder,
        database_url=db_url or f"sqlite:///{folder / 'mlops.db'}",
        artifact_url=art_url or str(folder / "artifacts"),
        artifact_options=options if art_url else "",
    )
