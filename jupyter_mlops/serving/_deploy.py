"""Deploying, redeploying and stopping endpoints (services over a ``Backend``).

``deploy`` prepares everything the server needs before it starts — the model's files and
the entry script in a revision folder, the listening socket bound (so the URL is known at
once), the key generated and only its hash stored — then starts the endpoint's server
process (``serving.supervisor``) detached, handing it the socket. Deploying a name that is
already served swaps it to the new model or script without failed requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Float, Int
from traitlets.config import Configurable

from .._inputs import check_name
from .._processes import kill_tree, started_before
from ..errors import Conflict, InvalidInput, MlopsError, NotFound
from ..registry import ModelRegistry
from ..store import ENDPOINT_ACTIVE, HOSTNAME, Backend, load_file_config, new_run_id
from ._entry import check_entry, default_entry
from .supervisor import ENV_START

KEY_FILE = "key"  # beside the endpoint's revisions, mode 0600: the owner's copy of the key


class Serving(Configurable):
    """``c.Serving.max_body_bytes = 50 * 2**20`` in ``jupyter_mlops_config.py``."""

    max_body_bytes = Int(10 * 2**20, config=True,
                         help="Largest request body /score accepts (larger: 413).")
    request_timeout = Float(60.0, config=True,
                            help="Seconds run() may take for one request (longer: 504).")


class EndpointFailed(MlopsError):
    """An endpoint (or a new revision of it) could not start: its init() failed, say."""


def parse_memory(value: str | int | None) -> int | None:
    """``"1G"``, ``"512M"``, ``"2048K"`` or a number of bytes; None for no limit."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise InvalidInput(f"--memory takes a size such as 512M or 2G, got {value!r}")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _check_numbers(cores: float, replicas: int, port: int) -> None:
    if isinstance(cores, bool) or not isinstance(cores, (int, float)) or not cores > 0:
        raise InvalidInput(f"--cores takes a positive number, got {cores!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 64:
        raise InvalidInput(f"--replicas takes a whole number from 1 to 64, got {replicas!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidInput(f"--port takes a port number (0 for any free one), got {port!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Conflict(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                       "--port, or leave it out for a free one") from None
    sock.listen(1024)
    return sock


def _resolve_model(backend: Backend, model: str) -> Any:
    """``name``, ``name:3``, ``name:latest``, ``name@alias`` → the Model version."""
    registry = ModelRegistry(backend)
    if not isinstance(model, str) or not model:
        raise InvalidInput(f"deploy takes a model such as 'digits', 'digits:3' or "
                           f"'digits@production', got {model!r}")
    name, at, alias = model.partition("@")
    return registry.get(name, alias) if at else registry.get(model)


def _entry_source(model: Any, entry: str | os.PathLike[str] | None,
                  entry_source: str | None) -> tuple[str, str]:
    if entry_source is not None:
        name = "cell" if entry is None else Path(entry).name
        check_entry(entry_source, f"the entry script ({name})")
        return name, entry_source
    if entry is not None:
        path = Path(entry).expanduser()
        if not path.is_file():
            raise InvalidInput(f"--entry {entry}: no such file; give the path of a Python "
                               "script with init() and run(raw_data)")
        source = path.read_text(encoding="utf-8")
        check_entry(source, f"the entry script {path}")
        return path.name, source
    return default_entry([f["path"] or model.root_name for f in model.files()],
                         {"tags": model.tags})


def _prepare(backend: Backend, endpoint_id: str, model: Any, entry_name: str,
             source: str, namespace: Mapping[str, Any] | None) -> tuple[Path, list[str]]:
    """A new revision folder: ``model/`` (the model's files), ``entry.py`` and, for a
    ``%%deploy`` cell, ``carried/`` (the names it reads from the notebook, as ``%%train``
    carries them). Returns the folder and the carried names."""
    folder = (backend.location.directory / "endpoints" / endpoint_id
              / f"rev-{uuid.uuid4().hex[:8]}")
    folder.mkdir(parents=True)
    try:
        if model.kind == "folder":
            model.download(folder / "model")
        else:
            model.download(str(folder / "model") + os.sep)
        carried = _write_entry(folder, source, namespace)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, carried


def _write_entry(folder: Path, source: str, namespace: Mapping[str, Any] | None
                 ) -> list[str]:
    """``entry.py`` and, for a ``%%deploy`` cell, ``carried/`` in ``folder``; returns the
    carried names."""
    from ..jobs._cell import bound_names, carry, free_names

    prelude, carried = "", []
    if namespace is not None:
        names = [n for n in free_names(source) if n not in bound_names(source)]
        plan = carry(names, namespace, folder / "carried")
        carried = sorted(plan.values)
        prelude = "".join(line + "\n" for line in plan.imports)
        if carried:
            prelude += CARRY_PRELUDE.format(names=carried)
    (folder / "entry.py").write_text(prelude + source, encoding="utf-8")
    return carried


# Put at the top of a %%deploy cell's script: the notebook names it reads, restored.
CARRY_PRELUDE = """\
import cloudpickle as _mlops_cloudpickle, pathlib as _mlops_pathlib
for _mlops_name in {names!r}:
    with open(_mlops_pathlib.Path(__file__).parent / "carried" / (_mlops_name + ".pkl"),
              "rb") as _mlops_file:
        globals()[_mlops_name] = _mlops_cloudpickle.load(_mlops_file)
# -- the %%deploy cell --
"""


def deploy(backend: Backend, model: str, *, entry: str | os.PathLike[str] | None = None,
           entry_source: str | None = None, name: str | None = None,
           host: str = "127.0.0.1", port: int = 0, cores: float = 1,
           memory: str | int | None = None, replicas: int = 1, auth: bool = True,
           namespace: Mapping[str, Any] | None = None, target: str | None = None,
           min_replicas: int | None = None, max_replicas: int | None = None
           ) -> tuple[str, int, str | None]:
    """Serve ``model``; returns ``(endpoint_id, revision, key)`` at once (the key is None
    for a redeploy, which keeps the endpoint's key, or without auth). Wait with
    ``wait_served``. On ``target="ray"`` it returns once Ray Serve serves it (``_ray``),
    with ``replicas`` replicas, or autoscaled within ``min_replicas``..``max_replicas``."""
    from ..compute import default_target
    from ._ray import check_scaling

    _check_numbers(cores, replicas, port)
    limit = parse_memory(memory)
    target = target or default_target()
    if target not in ("local", "ray"):
        raise InvalidInput(f"--target {target!r}: endpoints run on 'local' (a server process "
                           "on this machine) or 'ray' (Ray Serve)")
    autoscaling = check_scaling(replicas, min_replicas, max_replicas)
    if target == "local" and autoscaling is not None:
        raise InvalidInput("--min-replicas/--max-replicas (autoscaling) need --target ray; "
                           "locally, --replicas sets a fixed number of workers")
    if target == "ray" and (port or host != "127.0.0.1"):
        raise InvalidInput("--host/--port do not apply to --target ray: Ray Serve's HTTP "
                           "proxy serves every endpoint (c.RayServing.http_host)")
    if not is_loopback(host) and not auth:
        raise InvalidInput(f"serving on {host} without a key would let anyone who reaches "
                           "this machine call run(); keep auth on, or bind 127.0.0.1")
    version = _resolve_model(backend, model)
    entry_name, source = _entry_source(version, entry, entry_source)
    name = check_name(name or version.name, "endpoint name")
    settings = Serving(config=load_file_config())
    config = {"cores": cores, "memory": limit, "replicas": replicas,
              "max_body": settings.max_body_bytes, "timeout": settings.request_timeout,
              "model_info": {"name": version.name, "version": version.version,
                             "tags": version.tags}}
    content = {"model_name": version.name, "model_version": version.version,
               "entry": source, "entry_name": entry_name}

    live = [row for row in backend.endpoints.list(status=ENDPOINT_ACTIVE)
            if row["name"] == name and backend.endpoint_as_read(row)["status"] in
            ENDPOINT_ACTIVE]
    if live and "ray" in (target, live[0]["config"].get("target", "local")):
        raise Conflict(f"endpoint {name!r} is served already; redeploying onto or from Ray "
                       "Serve is not supported: delete it first, or pick another --name")
    if live:  # a redeploy: the running server swaps to the new revision
        current = live[0]
        folder, carried = _prepare(backend, current["id"], version, entry_name, source,
                                   namespace)
        revision = backend.endpoints.redeploy(
            current["id"], **content, config={**current["config"], **config,
                                              "folder": str(folder), "carried": carried})
        return current["id"], revision, None

    endpoint_id = new_run_id()
    key = secrets.token_urlsafe(32) if auth else None
    if target == "ray":
        return endpoint_id, 1, _deploy_ray(
            backend, endpoint_id, name, version, source, namespace, key, content, config,
            cores=cores, memory=limit, replicas=replicas, autoscaling=autoscaling)
    folder, carried = _prepare(backend, endpoint_id, version, entry_name, source, namespace)
    if key is not None:
        _write_key(folder.parent, key)
    sock = _bind(host, port)
    try:
        bound = sock.getsockname()[1]
        shown = HOSTNAME if host in ("0.0.0.0", "::") else host
        url = f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"
        backend.endpoints.create(
            endpoint_id, name, **content, bind_host=host, port=bound, url=url,
            key_hash=hashlib.sha256(key.encode()).hexdigest() if key else None,
            config={**config, "folder": str(folder), "carried": carried})
        with open(folder.parent / "server.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jupyter_mlops.serving.supervisor", endpoint_id,
                 str(sock.fileno())],
                pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **backend.location.to_env(),
                     ENV_START: json.dumps(backend.endpoints.get(endpoint_id), default=str)},
                cwd=str(folder.parent))
        backend.endpoints.update(endpoint_id, host=HOSTNAME, pid=process.pid,
                                 heartbeat_at=time.time())
    finally:
        sock.close()  # the server holds its own copy
    _capture_environment_later(backend, endpoint_id)
    return endpoint_id, 1, key


def _write_key(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / KEY_FILE
    key_file.touch(mode=0o600)
    key_file.write_text(key)


def _deploy_ray(backend: Backend, endpoint_id: str, name: str, version: Any, source: str,
                namespace: Mapping[str, Any] | None, key: str | None,
                content: dict[str, Any], config: dict[str, Any], **scale: Any) -> str | None:
    """The entry script (and carried names) travel with the deployment; the replicas
    fetch the model from the artifact store themselves."""
    import tempfile

    from ._ray import carried_files, deploy_on_ray

    with tempfile.TemporaryDirectory(prefix="mlops-deploy-") as scratch:
        carried = _write_entry(Path(scratch), source, namespace)
        files = carried_files(Path(scratch))
    if key is not None:
        _write_key(backend.location.directory / "endpoints" / endpoint_id, key)
    deploy_on_ray(backend, endpoint_id, name=name, content=content,
                  config={**config, "carried": carried},
                  key_hash=hashlib.sha256(key.encode()).hexdigest() if key else None,
                  files=files, **scale)
    _capture_environment_later(backend, endpoint_id)
    return key


def _capture_environment_later(backend: Backend, endpoint_id: str) -> None:
    import threading

    from .._environment import capture_environment

    def record() -> None:
        with contextlib.suppress(MlopsError):  # e.g. a full disk: the endpoint goes on
            backend.endpoints.update(endpoint_id, environment=capture_environment())

    threading.Thread(target=record, name="mlops-endpoint-environment", daemon=True).start()


def wait_served(backend: Backend, endpoint_id: str, revision: int,
                timeout: float = 300.0) -> dict[str, Any]:
    """Block until ``revision`` serves (returns the row) or failed (raises
    ``EndpointFailed`` with the reason and the log's last lines)."""
    deadline = time.monotonic() + timeout
    while True:
        row = backend.endpoint_row(endpoint_id)
        if row["status"] == "ready" and (row["served_revision"] or 0) >= revision:
            return row
        if row["status"] not in ENDPOINT_ACTIVE:
            raise EndpointFailed(f"endpoint {row['name']} {row['status']}: "
                                 f"{row['error'] or 'no reason recorded'}")
        if row["config"].get("failed_revision") == revision:
            raise EndpointFailed(f"endpoint {row['name']}: the new revision failed and the "
                                 f"previous one goes on serving: {row['error']}")
        if time.monotonic() > deadline:
            raise EndpointFailed(f"endpoint {row['name']} not ready after {timeout:g} s "
                                 "(still starting); see its log")
        time.sleep(0.02)


def stop(backend: Backend, endpoint_id: str, grace: float = 30.0) -> None:
    """Stop an endpoint's server and free its port: asked first (the workers drain), killed
    after ``grace`` seconds. Its record stays, ``stopped``."""
    row = backend.endpoints.get(endpoint_id)
    if row is None:
        raise NotFound(f"no endpoint with id {endpoint_id!r}")
    if row["config"].get("target") == "ray":
        from ._ray import stop_on_ray

        stop_on_ray(backend, endpoint_id)
        return
    if row["status"] in ENDPOINT_ACTIVE:
        backend.endpoints.request_stop(endpoint_id)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if backend.endpoint_row(endpoint_id)["status"] not in ENDPOINT_ACTIVE:
                break
            time.sleep(0.05)
        else:
            if row["pid"] and row["host"] == HOSTNAME and started_before(
                    row["pid"], row["created_at"]):
                kill_tree(row["pid"])
        backend.endpoints.set_status(endpoint_id, "stopped",
                                     only_from=(*ENDPOINT_ACTIVE,))
    if row["host"] in (None, HOSTNAME):
        folder = backend.location.directory / "endpoints" / endpoint_id
        for revision in folder.glob("rev-*"):  # the model copies; the key and log stay
            shutil.rmtree(revision, ignore_errors=True)


def endpoint_key(backend: Backend, endpoint_id: str) -> str | None:
    """The key, for its owner (read from the owner-only key file); None without auth."""
    path = backend.location.directory / "endpoints" / endpoint_id / KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
