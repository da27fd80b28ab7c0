"""The jupyter_server extension: the workspace over REST under ``/mlops/api/``.

A surface beside the magics and the CLI: handlers call only the API facade. The contract
is ``openapi.yaml`` beside this file; ``ROUTES`` is checked against it.
"""

from ._app import MlopsApp
from ._handlers import API_PREFIX, ROUTES

__all__ = ["API_PREFIX", "ROUTES", "MlopsApp"]
