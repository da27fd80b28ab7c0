"""REST handlers: HTTP only. Each verb parses and bounds its arguments, calls the API facade
in the extension's thread pool and writes JSON; errors are mapped once, in ``MlopsHandler``.

The route table (``ROUTES``) is the contract of ``openapi.yaml`` (a test checks both ways).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import Conflict, InvalidInput, MlopsError, NotFound, WorkspaceError

API_PREFIX = "/mlops/api/"
MAX_QUERY = 4096  # characters of a query string
MAX_BODY = 64 * 1024  # bytes of a request body (the API's POSTs need none)
MAX_TEXT = 200  # characters of one text argument (q, a tag)
MAX_LIST = 50  # repeated arguments (tag=, keys)
CHUNK = 256 * 1024  # bytes per write of an artifact download

# Refused requests say what was wrong; WorkspaceError and anything unexpected are logged
# with their traceback and answered with a generic message (no path, no SQL).
_STATUS = ((InvalidInput, 400), (NotFound, 404), (Conflict, 409))
_GENERIC = {
    500: "the server failed to answer; the Jupyter server log has the details",
    "workspace": "the workspace cannot be read or written; the Jupyter server log says why",
}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/,;:)]+/)+[^\s'\",;:)]*")


class ApiError(web.HTTPError):
    """An answer other than 200 whose ``message`` is safe to show to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "%s", message)
        self.message = message


class MlopsHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every handler: authorization on resource ``mlops``, bounded requests, store
    calls off the event loop, JSON answers and the one error mapping."""

    auth_resource = "mlops"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:  # type: ignore[override]
        self._started = time.perf_counter()
        await super().prepare()  # authentication, XSRF on mutating verbs, origin
        if len(self.request.query) > MAX_QUERY:
            raise ApiError(413, f"the query string is longer than {MAX_QUERY} characters")
        declared = self.request.headers.get("Content-Length", "0")
        if len(self.request.body or b"") > MAX_BODY or (
                declared.isdigit() and int(declared) > MAX_BODY):
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")

    def check_xsrf_cookie(self) -> None:
        # jupyter_server answers a cross-origin POST with 404; a refusal is a 403.
        try:
            super().check_xsrf_cookie()
        except web.HTTPError as exc:
            if exc.status_code == 404:
                raise web.HTTPError(403, "cross-origin request refused") from None
            raise

    # A verb a route does not serve is refused like the others: 403 before authentication,
    # then 405. (Subclasses define the verbs they serve; ``verbs()`` lists those.)
    @web.authenticated
    @authorized
    async def _not_served(self, *args: Any, **kwargs: Any) -> None:
        raise ApiError(405, f"{self.request.method} is not served here")

    get = post = put = patch = delete = _not_served

    # -- calling the API ----------------------------------------------------------------

    @property
    def _state(self) -> Any:
        return self.settings["mlops_api"]

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(workspace)`` in the extension's thread pool; typed errors become answers."""
        state = self._state
        try:
            return await asyncio.get_running_loop().run_in_executor(
                state.executor, lambda: fn(state.workspace()))
        except WorkspaceError as exc:
            self.log.error("jupyter-mlops: %s %s: %s", self.request.method,
                           self.request.path, exc, exc_info=exc)
            raise ApiError(500, _GENERIC["workspace"]) from None
        except MlopsError as exc:
            status = next((code for kind, code in _STATUS if isinstance(exc, kind)), None)
            if status is None:
                raise
            raise ApiError(status, self._scrubbed(str(exc))) from None

    def _scrubbed(self, message: str) -> str:
        """A message without the filesystem paths it may name (the workspace's folder)."""
        ws = getattr(self._state, "_workspace", None)
        if ws is not None:
            for where in (str(ws.location.directory), ws.location.artifact_url,
                          ws.location.database_url):
                message = message.replace(where, "the workspace")
        return _ABSOLUTE_PATH.sub("<path>", message)[:2000]

    def reply(self, data: Any, status: int = 200) -> None:
        text = to_json(data)
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        # The server's time for this request, from prepare() to the encoded answer
        # (benchmarks/api.py reads it).
        self.set_header("Server-Timing",
                        f"app;dur={(time.perf_counter() - self._started) * 1000:.2f}")
        self.finish(text)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message else exc.reason or ""
            message = message or self._reason
        else:
            message = _GENERIC[500]
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"code": status_code, "message": message}))

    # -- arguments ------------------------------------------------------------------------

    def text_arg(self, name: str, default: str | None = None) -> str | None:
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        if len(value) > MAX_TEXT:
            raise ApiError(400, f"{name} is longer than {MAX_TEXT} characters")
        return value

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get_query_argument(name, None)
        if value is None or value == "":
            return default
        if not re.fullmatch(r"\d{1,12}", value) or not low <= int(value) <= high:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        return int(value)

    def list_arg(self, name: str) -> list[str]:
        values = self.get_query_arguments(name)
        if len(values) > MAX_LIST:
            raise ApiError(400, f"at most {MAX_LIST} {name} arguments")
        for value in values:
            if len(value) > MAX_TEXT:
                raise ApiError(400, f"{name} is longer than {MAX_TEXT} characters")
        return values


def to_json(data: Any) -> str:
    """JSON text; NaN and infinities (which JSON cannot hold) become null."""
    try:
        return json.dumps(data, allow_nan=False, default=_plain)
    except ValueError:
        return json.dumps(_finite(data), allow_nan=False, default=_plain)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # NumPy and pandas scalars
    if callable(item):
        return _finite(item())
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- handlers ---------------------------------------------------------------------------------


class ExperimentsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"experiments": await self.call(lambda ws: ws.experiments())})


class RunsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        tags = {}
        for pair in self.list_arg("tag"):
            key, sep, value = pair.partition(":")
            if not sep or not key:
                raise ApiError(400, f"a tag filter is tag=KEY:VALUE, got {pair!r}")
            tags[key] = value
        experiment = self.text_arg("experiment")
        statuses = self.list_arg("status")
        q = self.text_arg("q")
        limit = self.int_arg("limit", 50, 1, 1000)
        cursor = self.text_arg("cursor")

        def page(ws: Any) -> dict[str, Any]:
            events = ws.events()["cursor"]  # before the listing: no change falls between
            runs, after = ws.runs_page(experiment=experiment, status=statuses or None,
                                       tags=tags or None, q=q, limit=limit, cursor=cursor)
            return {"runs": [run.snapshot for run in runs], "cursor": after,
                    "events_cursor": events}

        self.reply(await self.call(page))


class RunHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.reply(await self.call(lambda ws: ws.get_run(run_id).to_dict()))


class RunMetricsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        keys = [k for arg in self.list_arg("keys") for k in arg.split(",") if k]
        if len(keys) > MAX_LIST:
            raise ApiError(400, f"at most {MAX_LIST} metric keys")
        max_points = self.int_arg("max_points", 2000, 4, 100_000)

        def series(ws: Any) -> dict[str, Any]:
            run = ws.get_run(run_id)
            return {"run_id": run.id, "max_points": max_points,
                    "metrics": ws.metric_series(run, keys or None, max_points)}

        self.reply(await self.call(series))


class RunLogsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        after = self.int_arg("after", 0, 0, 10**18)
        limit = self.int_arg("limit", 1000, 1, 10_000)

        def chunks(ws: Any) -> dict[str, Any]:
            found = ws.get_run(run_id).log_chunks(after=after, limit=limit)
            return {"chunks": found, "after": found[-1]["id"] if found else after,
                    "more": len(found) == limit}

        self.reply(await self.call(chunks))


class RunArtifactsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.reply({"artifacts": await self.call(lambda ws: ws.get_run(run_id).artifacts())})


class ArtifactHandler(MlopsHandler):
    """One artifact, always as a download: ``attachment``, ``application/octet-stream``
    and ``nosniff``, so an HTML or SVG file a run wrote never renders in Jupyter's origin."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str, path: str) -> None:
        handle, size = await self.call(lambda ws: ws.get_run(run_id).open_artifact(path))
        try:
            name = path.rsplit("/", 1)[-1]
            fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "artifact"
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f"attachment; filename=\"{fallback}\"; "
                            f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}")
            self.set_header("Content-Length", str(size))
            self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
            loop = asyncio.get_running_loop()
            while chunk := await loop.run_in_executor(self._state.executor, handle.read,
                                                      CHUNK):
                self.write(chunk)
                await self.flush()
        finally:
            handle.close()
        self.finish()


class RunCancelHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        def cancel(ws: Any) -> dict[str, Any]:
            run = ws.get_run(run_id)
            run.cancel()
            return run.to_dict()

        self.reply(await self.call(cancel), status=202)


class SweepsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        experiment = self.text_arg("experiment")
        self.reply({"sweeps": await self.call(
            lambda ws: [s.to_dict() for s in ws.sweeps(experiment=experiment)])})


class SweepHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, sweep_id: str) -> None:
        def leaderboard(ws: Any) -> dict[str, Any]:
            sweep = ws.get_sweep(sweep_id)
            return {**sweep.to_dict(),
                    "leaderboard": sweep.to_dataframe().to_dict(orient="records")}

        self.reply(await self.call(leaderboard))


class ModelsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"models": await self.call(
            lambda ws: [m.info() for m in ws.models.list()])})


class ModelHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        def versions(ws: Any) -> dict[str, Any]:
            found = ws.models.list(name=name)
            if not found:
                raise NotFound(f"no model named {name!r}")
            return {"name": found[0].name, "versions": [m.info() for m in found]}

        self.reply(await self.call(versions))


class ModelVersionHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str, version: str) -> None:
        def one(ws: Any) -> dict[str, Any]:
            model = ws.models.get(name, version)
            return {**model.info(), "files": model.files(),
                    "lineage": model.lineage().to_dict()}

        self.reply(await self.call(one))


class DatasetsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"datasets": await self.call(
            lambda ws: [d.info() for d in ws.datasets.list()])})


class DatasetHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        def versions(ws: Any) -> dict[str, Any]:
            found = ws.datasets.list(name=name)
            if not found:
                raise NotFound(f"no dataset named {name!r}")
            return {"name": found[0].name,
                    "versions": [{**d.info(), "runs": [r.id for r in d.runs()]}
                                 for d in found]}

        self.reply(await self.call(versions))


class EndpointsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"endpoints": await self.call(
            lambda ws: [e.to_dict() for e in ws.endpoints(all=True)])})


class TargetsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        def targets(ws: Any) -> dict[str, Any]:
            queued = ws.runs(status="queued", limit=200)
            return {"slots": ws.targets(),
                    "queue": [{"run_id": r.id, "name": r.snapshot["name"],
                               "target": r.snapshot["target"],
                               "created_at": r.snapshot["created_at"]}
                              for r in reversed(queued)]}

        self.reply(await self.call(targets))


class EventsHandler(MlopsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        since = self.text_arg("since")
        limit = self.int_arg("limit", 500, 1, 5000)
        self.reply(await self.call(lambda ws: ws.events(since, limit=limit)))


# The contract: path templates under API_PREFIX (as in openapi.yaml) and their handlers.
ROUTES: list[tuple[str, type[MlopsHandler]]] = [
    ("experiments", ExperimentsHandler),
    ("runs", RunsHandler),
    ("runs/{run_id}", RunHandler),
    ("runs/{run_id}/metrics", RunMetricsHandler),
    ("runs/{run_id}/logs", RunLogsHandler),
    ("runs/{run_id}/artifacts", RunArtifactsHandler),
    ("runs/{run_id}/artifacts/{path}", ArtifactHandler),
    ("runs/{run_id}/cancel", RunCancelHandler),
    ("sweeps", SweepsHandler),
    ("sweeps/{sweep_id}", SweepHandler),
    ("models", ModelsHandler),
    ("models/{name}", ModelHandler),
    ("models/{name}/{version}", ModelVersionHandler),
    ("datasets", DatasetsHandler),
    ("datasets/{name}", DatasetHandler),
    ("endpoints", EndpointsHandler),
    ("targets", TargetsHandler),
    ("events", EventsHandler),
]


def route_pattern(template: str) -> str:
    """The tornado pattern of a path template: ``{path}`` spans segments, others do not."""
    def group(match: re.Match[str]) -> str:
        name = match[1]
        return f"(?P<{name}>.+)" if name == "path" else f"(?P<{name}>[^/]+)"

    return API_PREFIX + re.sub(r"\{(\w+)\}", group, template)


def route_table() -> list[tuple[str, type[MlopsHandler]]]:
    return [(route_pattern(template), handler) for template, handler in ROUTES]


def verbs(handler: type[MlopsHandler]) -> list[str]:
    """The HTTP verbs a handler answers (those it defines itself)."""
    return [v for v in ("get", "post", "put", "patch", "delete") if v in vars(handler)]
