"""Serving: a registered model version as an HTTP endpoint, from an ``init()``/``run()``
entry script, in its own detached server process (Starlette under uvicorn).

Names are imported on first use: the worker process imports only what it serves with.
"""

from __future__ import annotations

from .._lazy import lazy_names

_WHERE = {
    "EndpointFailed": "_deploy",
    "Serving": "_deploy",
    "deploy": "_deploy",
    "endpoint_key": "_deploy",
    "parse_memory": "_deploy",
    "stop": "_deploy",
    "wait_served": "_deploy",
    "default_entry": "_entry",
    "model_dir": "_entry",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return __all__
