"""Endpoints on Ray Serve (``--target ray``): the same scoring app, replicas across a cluster.

A Ray Serve application per endpoint (``mlops-<endpoint id>``), one deployment whose
replicas each build the very ASGI app of local serving (``_app.build_app``) around the
entry script's ``run()``: ``init()`` once per replica, ``run(raw)`` per request, the model's
files at ``MLOPS_MODEL_DIR``. A replica fetches the model version from the workspace's
artifact store itself (the workspace location comes from the deployer), so replicas on
other nodes never read the deployer's local files; the entry script and the names a
``%%deploy`` cell carries travel with the deployment.

Serve's HTTP proxy listens on loopback (a free port when this starts Serve; the running
instance's otherwise) and routes ``/<endpoint id>`` to the endpoint. Each replica writes its
log lines and its request figures (also the endpoint's heartbeat) into the store; a replica
whose ``init()`` fails records the endpoint ``failed`` with the reason, and the deployer
then deletes the application, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Unicode
from traitlets.config import Configurable

from ..errors import InvalidInput
from ..store import ENDPOINT_ACTIVE, load_file_config

if TYPE_CHECKING:
    from ..store import Backend

APP_PREFIX = "mlops-"
STATS_EVERY = 1.0  # seconds between a replica's reports (its heartbeat)


class RayServing(Configurable):
    """``c.RayServing.http_host`` in ``jupyter_mlops_config.py``."""

    http_host = Unicode("127.0.0.1", config=True,
                        help="Where Serve's HTTP proxy listens when this process starts Serve "
                        "on the cluster (a free port is chosen). A running Serve keeps its own.")


def app_name(endpoint_id: str) -> str:
    return APP_PREFIX + endpoint_id


def check_scaling(replicas: int, min_replicas: int | None, max_replicas: int | None
                  ) -> dict[str, int] | None:
    """Serve's ``autoscaling_config`` for ``--min-replicas``/``--max-replicas`` (None: a fixed
    number of replicas); ``--replicas`` is where autoscaling starts."""
    if min_replicas is None and max_replicas is None:
        return None
    for flag, value in (("--min-replicas", min_replicas), ("--max-replicas", max_replicas)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= 64):
            # Not 0: replicas report the endpoint alive, so none would read as lost.
            raise InvalidInput(f"{flag} takes a whole number from 1 to 64, got {value!r}")
    low = 1 if min_replicas is None else min_replicas
    high = max(replicas, low) if max_replicas is None else max_replicas
    if low > high:
        raise InvalidInput(f"--min-replicas {low} and --max-replicas {high}: the bounds must "
                           "satisfy min <= max")
    if not low <= replicas <= high:
        raise InvalidInput(f"--replicas {replicas} (where autoscaling starts) must lie within "
                           f"--min-replicas {low} and --max-replicas {high}")
    return {"min_replicas": low, "max_replicas": high, "initial_replicas": replicas}


def _serve(ray: Any) -> tuple[Any, str, int]:
    """``ray.serve``, started on the cluster if it is not (its proxy on a free loopback port);
    returns it with the proxy's host and port."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        settings = RayServing(config=load_file_config())
        with socket.socket() as probe:
            probe.bind((settings.http_host, 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": settings.http_host, "port": port})
        client = _get_global_client()
    config = client.http_config
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return serve, host, int(config.port)


def carried_files(folder: Path) -> dict[str, bytes]:
    """The files of a prepared folder (entry script, carried names) as bytes, to travel."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def deploy_on_ray(backend: Backend, endpoint_id: str, *, name: str, content: dict[str, Any],
                  config: dict[str, Any], key_hash: str | None, files: dict[str, bytes],
                  cores: float, memory: int | None, replicas: int,
                  autoscaling: dict[str, int] | None, timeout: float = 300.0) -> None:
    """Record the endpoint and run its Serve application; returns once it serves, or raises
    ``EndpointFailed`` (the endpoint ``failed``, its application deleted)."""
    from ..compute import get_target
    from ._deploy import EndpointFailed

    ray = get_target("ray").connect()
    serve, host, port = _serve(ray)
    route = "/" + endpoint_id
    url = f"http://{host}:{port}{route}"
    backend.endpoints.create(
        endpoint_id, name, **content, bind_host=host, port=port, url=url, key_hash=key_hash,
        config={**config, "target": "ray", "app": app_name(endpoint_id),
                "autoscaling": autoscaling}, heartbeat_at=time.time())
    options: dict[str, Any] = {"num_cpus": cores}
    if memory:
        options["memory"] = memory
    scale: dict[str, Any] = ({"autoscaling_config": autoscaling} if autoscaling
                             else {"num_replicas": replicas})
    deployment = serve.deployment(
        serve.ingress()(ScoringReplica), name="score", ray_actor_options=options,
        max_ongoing_requests=max(8, 4 * int(max(cores, 1))), **scale)
    settings = {"key_hash": key_hash, "max_body": config["max_body"],
                "timeout": config["timeout"], "threads": max(4, 2 * int(max(cores, 1))),
                "model_info": config["model_info"], "name": name}
    application = deployment.bind(endpoint_id, backend.location.to_env(),
                                  f"{content['model_name']}:{content['model_version']}",
                                  files, settings)
    try:
        # The private form that does not block: the store is watched meanwhile, where a
        # replica whose init() failed says so at once (Serve would retry it first).
        serve._run(application, _blocking=False, name=app_name(endpoint_id),
                   route_prefix=route)
        problem = _wait_running(serve, backend, endpoint_id, timeout)
    except Exception as exc:
        problem = f"Ray Serve refused the application: {exc}"
    except BaseException:  # interrupted: nothing may stay half-started
        _delete_app(serve, endpoint_id)
        backend.endpoints.set_status(endpoint_id, "failed",
                                     error="interrupted while the replicas started")
        raise
    if problem is None:
        backend.endpoints.set_status(endpoint_id, "ready", served_revision=1, error=None)
        return
    _delete_app(serve, endpoint_id)
    backend.endpoints.set_status(endpoint_id, "failed", error=problem)
    row = backend.endpoints.get(endpoint_id) or {}
    raise EndpointFailed(f"endpoint {name} failed: {row.get('error') or problem}")


def _wait_running(serve: Any, backend: Backend, endpoint_id: str, timeout: float
                  ) -> str | None:
    """None once the application runs; else why not. Beats the endpoint's heartbeat while
    its replicas start (they beat it after)."""
    deadline = time.monotonic() + timeout
    name = app_name(endpoint_id)
    while True:
        row = backend.endpoints.get(endpoint_id)
        if row is None or row["status"] not in ENDPOINT_ACTIVE:
            return (row or {}).get("error") or "the endpoint ended while starting"
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return None
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            return f"Ray Serve: {status.message or status.status}"
        if time.monotonic() > deadline:
            return f"the replicas were not ready within {timeout:g} s"
        backend.endpoints.update(endpoint_id, heartbeat_at=time.time())
        time.sleep(0.2)


def _delete_app(serve: Any, endpoint_id: str) -> None:
    with contextlib.suppress(Exception):  # deleting what is not there is no error
        serve.delete(app_name(endpoint_id))


def stop_on_ray(backend: Backend, endpoint_id: str) -> None:
    """Delete the endpoint's Serve application (its replicas drain and exit)."""
    from ..compute import get_target

    get_target("ray").connect()
    from ray import serve

    _delete_app(serve, endpoint_id)
    backend.endpoints.set_status(endpoint_id, "stopped", only_from=(*ENDPOINT_ACTIVE,))


# -- on the cluster: one replica ------------------------------------------------------------


class _LogStream(io.TextIOBase):
    """``print`` in the entry script: lines to the endpoint's log (and Ray's own log)."""

    def __init__(self, log: Any, echo: Any):
        self.log, self.echo, self.partial = log, echo, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.echo.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.log.line(line)
        return len(text)

    def flush(self) -> None:
        self.echo.flush()


class ScoringReplica:
    """One Serve replica: fetches the model, runs ``init()``, serves ``build_app``'s app."""

    def __init__(self, endpoint_id: str, env: dict[str, str], model: str,
                 files: dict[str, bytes], settings: dict[str, Any]):
        os.environ.update(env)  # the workspace location, from the deployer
        from ..registry import ModelRegistry
        from ..store import Backend
        from ._app import Stats
        from ._entry import ENV_MODEL_DIR, load_entry
        from .supervisor import LogWriter

        self.endpoint_id, self.settings = endpoint_id, settings
        self.backend = backend = Backend.open()
        self.log = LogWriter()
        self.log.attach(backend, endpoint_id)
        self.replica = self._replica_id()
        self.folder = Path(tempfile.mkdtemp(prefix="mlops-replica-"))
        self.stats = Stats()
        sys.stdout = _LogStream(self.log, sys.__stdout__)
        sys.stderr = _LogStream(self.log, sys.__stderr__)
        self.log.line(f"endpoint: replica {self.replica} starting ({model}, pid {os.getpid()})")
        try:
            for relative, data in files.items():
                path = self.folder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            version = ModelRegistry(backend).get(model)
            if version.kind == "folder":
                version.download(self.folder / "model")
            else:
                version.download(str(self.folder / "model") + os.sep)
            os.environ[ENV_MODEL_DIR] = str(self.folder / "model")
            os.environ["MLOPS_MODEL_INFO"] = json.dumps(settings["model_info"])
            os.environ["MLOPS_ENDPOINT"] = settings["name"]
            self.run = load_entry(self.folder / "entry.py")
        except BaseException as exc:
            detail = traceback.format_exc()
            self.log.line(detail.rstrip("\n"))
            self.log.line(f"endpoint: replica {self.replica} failed to start")
            self.log.close()
            tail = "\n".join(self.log.tail)
            backend.endpoints.set_status(  # a replica failing later leaves the others be
                endpoint_id, "failed", only_from=("starting",),
                error=f"init() failed on a Ray Serve replica: "
                      f"{detail.strip().splitlines()[-1]}\n--- endpoint log (last lines) ---\n"
                      f"{tail}")
            shutil.rmtree(self.folder, ignore_errors=True)
            raise RuntimeError(f"the entry script failed: {exc!r}") from None
        self.log.line(f"endpoint: replica {self.replica} ready")
        self._stop = threading.Event()
        threading.Thread(target=self._report, name="mlops-replica-stats", daemon=True).start()

    @staticmethod
    def _replica_id() -> str:
        try:
            from ray import serve

            return serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (never in practice): the pid names it
            return str(os.getpid())

    def __serve_build_asgi_app__(self) -> Any:
        from ._app import build_app

        s = self.settings
        return build_app(self.run, key_hash=s["key_hash"], max_body=s["max_body"],
                         timeout=s["timeout"], threads=s["threads"], is_ready=lambda: True,
                         stats=self.stats, log=self.log.line)

    def _report(self) -> None:
        while not self._stop.wait(STATS_EVERY):
            try:
                self.backend.endpoints.replica_stats(self.endpoint_id, self.replica,
                                                     self.stats.snapshot())
            except Exception as exc:  # the database is away: the next round retries
                self.log.line(f"endpoint: replica {self.replica} could not report: {exc}")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            with contextlib.suppress(Exception):
                self.backend.endpoints.replica_stats(self.endpoint_id, self.replica,
                                                     self.stats.snapshot())
                self.log.close()
            shutil.rmtree(self.folder, ignore_errors=True)
