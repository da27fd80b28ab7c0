"""The scoring app: an ASGI (Starlette) app around an entry script's ``run()``.

Routes: ``POST /score`` (the body to ``run()``, its result as JSON), ``GET /healthz`` (the
process answers), ``GET /readyz`` (``init()`` is done). Every bad request gets a status and a
JSON error and the server keeps serving:

- no or a wrong key: 401 (``Authorization: Bearer KEY``; only the key's sha256 is known here);
- a body over ``max_body`` bytes: 413, from ``Content-Length`` before reading, else counted
  while reading, so a large body is never read whole;
- a content type other than JSON, text or bytes, or malformed JSON: 400;
- ``run()`` raising: 500 with a request id; the traceback goes only to the endpoint's log;
- ``run()`` slower than ``timeout``: 504 (its thread finishes in the background; others go on);
- a result JSON cannot hold (NaN, infinity, an object): 500 saying what it was.

``run()`` receives what Azure ML score scripts receive: the body as text (JSON is checked to
be valid first, so ``json.loads`` in ``run()`` never fails on it), or as bytes for
``application/octet-stream``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TEXT_TYPES = ("application/json", "text/plain")
BYTES_TYPES = ("application/octet-stream",)


class Stats:
    """Request figures of one server process: counts and the latencies of recent requests."""

    def __init__(self, keep: int = 2048):
        self.requests = 0
        self.errors = 0  # answered 4xx/5xx
        self.latencies: deque[float] = deque(maxlen=keep)  # seconds, of answered /score calls
        self.lock = threading.Lock()

    def record(self, seconds: float, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            self.errors += not ok
            self.latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self.latencies)
            requests, errors = self.requests, self.errors

        def pick(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None
        return {"requests": requests, "errors": errors, "p50": pick(0.5), "p99": pick(0.99)}


def _json_safe(value: Any) -> Any:
    """NumPy arrays and scalars as lists and numbers; everything else as it is."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):
        return tolist()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def encode_result(value: Any) -> bytes:
    """``run()``'s result as JSON bytes; ValueError saying why when JSON cannot hold it."""
    try:
        return json.dumps(_json_safe(value), allow_nan=False).encode()
    except ValueError:
        raise ValueError("run() returned NaN or infinity, which JSON cannot hold; return "
                         "None or a string for such values") from None
    except TypeError as exc:
        raise ValueError(f"run() returned something JSON cannot hold ({exc}); return "
                         "lists, dicts, numbers and strings") from None


class RunPool:
    """Threads that call ``run()``, with a timeout per call.

    A call past its timeout cannot be stopped (Python threads cannot be killed): its thread
    is left to finish, and once half the pool is held by such calls, new calls go to a fresh
    pool, so requests after a few hung ones are still served.
    """

    def __init__(self, size: int):
        self.size = size
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="mlops-run")
        self.abandoned = 0

    async def call(self, run: Callable[[Any], Any], data: Any, timeout: float) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self.executor, run, data)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.abandoned += 1
            if self.abandoned * 2 >= self.size:
                old, self.executor = self.executor, ThreadPoolExecutor(
                    self.size, thread_name_prefix="mlops-run")
                old.shutdown(wait=False)
                self.abandoned = 0
            raise


def build_app(run: Callable[[Any], Any], *, key_hash: str | None, max_body: int,
              timeout: float, threads: int, is_ready: Callable[[], bool],
              stats: Stats, log: Callable[[str], None]) -> Any:
    """The Starlette app calling ``run`` in a pool of ``threads`` threads."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    pool = RunPool(max(1, threads))
    ids = itertools.count(1)
    prefix = secrets.token_hex(3)  # request ids: unique per worker, no syscall per request

    def error(status: int, message: str, request_id: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {"error": message}
        if request_id:
            body["request_id"] = request_id
        return JSONResponse(body, status_code=status)

    def authorized(request: Request) -> bool:
        if key_hash is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        return hmac.compare_digest(digest, key_hash)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it passes ``max_body`` (nothing more is read)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > max_body:
                return None
            return await request.body()  # bounded by the declared length
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def score(request: Request) -> Response:
        started = time.perf_counter()
        request_id = f"{prefix}{next(ids):06x}"
        response = await _score(request, request_id)
        response.headers["x-request-id"] = request_id
        stats.record(time.perf_counter() - started, response.status_code < 400)
        return response

    async def _score(request: Request, request_id: str) -> Response:
        if not authorized(request):
            return error(401, "missing or wrong key: send 'Authorization: Bearer KEY' "
                              "(Endpoint.key, or `jupyter mlops endpoints show NAME`)")
        if not is_ready():
            return error(503, "the endpoint is starting: init() has not finished")
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind not in TEXT_TYPES + BYTES_TYPES:
            return error(400, f"content type {kind!r} is not accepted; send "
                              "application/json, text/plain or application/octet-stream")
        try:
            body = await read_body(request)
        except ClientDisconnect:
            return error(400, "the client went away before sending the whole body")
        if body is None:
            return error(413, f"the body is over the limit of {max_body} bytes "
                              "(c.Serving.max_body_bytes)")
        data: str | bytes = body
        if kind in TEXT_TYPES:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError:
                return error(400, "the body is not UTF-8 text")
            if kind == "application/json":
                try:
                    json.loads(data)
                except ValueError as exc:
                    return error(400, f"malformed JSON: {exc}")
        try:
            result = await pool.call(run, data, timeout)
        except TimeoutError:
            log(f"request {request_id}: run() took longer than {timeout:g} s; answered 504")
            return error(504, f"run() did not answer within {timeout:g} s", request_id)
        except Exception as exc:
            log(f"request {request_id}: run() raised\n{traceback.format_exc()}")
            return error(500, f"run() raised {type(exc).__name__}; see the endpoint's log",
                         request_id)
        try:
            payload = encode_result(result)
        except ValueError as exc:
            log(f"request {request_id}: {exc}")
            return error(500, str(exc), request_id)
        return Response(payload, media_type="application/json")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        if is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    return Starlette(routes=[
        Route("/score", score, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ])
