"""The jupyter_server extension application: configuration, the workspace, the handler table.

The workspace is opened on the first request, not when the server starts: a JupyterLab
started in a folder where nobody uses jupyter-mlops must not create ``.mlops/`` there, and
a workspace that cannot be opened answers each request with a 500 instead of stopping the
server. Every store call runs in this extension's thread pool, off the event loop.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from jupyter_server.extension.application import ExtensionApp
from traitlets import Int

from ..api import Workspace, workspace
from ..store import WorkspaceConfig, load_config, load_file_config
from ._handlers import API_PREFIX, route_table

ENV_LOCATION = ("JUPYTER_MLOPS_WORKSPACE", "JUPYTER_MLOPS_DATABASE_URL")


class ApiState:
    """What the handlers share: the thread pool and the workspace, opened on first use."""

    def __init__(self, app: MlopsApp):
        self._app = app
        self._lock = threading.Lock()
        self._workspace: Workspace | None = None
        self.executor = ThreadPoolExecutor(max_workers=app.api_threads,
                                           thread_name_prefix="mlops-api")

    def workspace(self) -> Workspace:
        """The workspace, opened on first use (in a pool thread: opening migrates)."""
        with self._lock:
            if self._workspace is None:
                # The files a notebook in the server's root folder reads, then what the
                # server itself was given (its command line and config files) on top.
                merged = load_file_config(self._app.serverapp.root_dir)
                merged.merge(self._app.config)
                config = load_config(merged)
                configured = any(os.environ.get(v) for v in ENV_LOCATION) or (
                    config.directory or config.database_url)
                # Without an explicit location, the nearest .mlops of the server's root folder
                # (what a notebook opened there finds), not of the server's working folder.
                start = None if configured else self._app.serverapp.root_dir
                self._workspace = workspace(config=config, start=start)
            return self._workspace


class MlopsApp(ExtensionApp):
    """The workspace over REST under ``/mlops/api/``, behind Jupyter's own authentication,
    authorization (resource ``mlops``) and XSRF checks. Configured with the same
    ``WorkspaceConfig`` as notebooks (``jupyter_server_config.py``,
    ``jupyter_mlops_config.py``)."""

    name = "jupyter_mlops"
    load_other_extensions = True
    classes: ClassVar[list[type]] = [WorkspaceConfig]

    api_threads = Int(
        4, config=True,
        help="Threads that run the store calls of REST requests, off the server's event loop.")

    def initialize_settings(self) -> None:
        self.settings["mlops_api"] = ApiState(self)

    def initialize_handlers(self) -> None:
        self.handlers.extend(route_table())
        self.log.info("jupyter-mlops REST API at %s", API_PREFIX)

    async def stop_extension(self) -> None:
        state: Any = self.settings.get("mlops_api")
        if state is not None:
            state.executor.shutdown(wait=False, cancel_futures=True)
