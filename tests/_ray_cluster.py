"""A throwaway local Ray cluster for the tests (``ray start --head`` on loopback, 2 CPUs and
one logical GPU), shared by the Ray test modules: each module that uses ``ray_cluster`` gets
its own, on free ports, with its own temp dir and token, stopped by the PIDs of its
processes (``ray stop`` would stop every Ray cluster of the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .test_artifacts_s3 import CREDENTIALS


def _free_port(avoid: range = range(0)) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _free_range(size: int = 60) -> range:
    """``size`` consecutive ports free now (Ray's workers listen on them)."""
    while True:
        base = _free_port()
        ports = range(base, base + size)
        if ports.stop > 65000:
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return ports


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster whose temp dir is ``temp_dir``, and their children."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(temp_dir: str) -> None:
    """Stop the cluster of ``temp_dir`` by the PIDs of its processes."""
    procs = _cluster_processes(temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=8)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=20)


START_ATTEMPTS = 3


def _start_head(temp_dir: str) -> tuple[int, str]:
    """``ray start --head`` on loopback; (port, "") or (0, why it failed)."""
    # Workers get a range of ports free now (the defaults would collide with other clusters
    # on this machine); the other components get free ports outside it.
    workers = _free_range()
    port = _free_port(workers)
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--include-dashboard=false", "--num-cpus", "2", "--num-gpus", "1",
         "--temp-dir", temp_dir, "--disable-usage-stats",
         "--min-worker-port", str(workers.start), "--max-worker-port", str(workers.stop - 1),
         "--ray-client-server-port", str(_free_port(workers)),
         "--dashboard-agent-listen-port", str(_free_port(workers)),
         "--object-store-memory", str(200 * 1024 * 1024)],
        capture_output=True, text=True, env={**os.environ}, timeout=240)
    return (port, "") if start.returncode == 0 else (0, start.stdout + start.stderr)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A throwaway Ray head on loopback; yields its address (also set as RAY_ADDRESS)."""
    temp_dir = tempfile.mkdtemp(prefix="mlray-", dir="/tmp")  # short: Unix socket paths
    token = Path(temp_dir) / "token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    saved = {k: os.environ.get(k) for k in [*auth, *CREDENTIALS, "RAY_ADDRESS"]}
    os.environ.update(auth)
    # The nodes' own S3 credentials (moto's), as a cluster's nodes would have theirs: the
    # workspace location itself (URLs, endpoint) comes from the submitter with each run.
    os.environ.update(CREDENTIALS)
    if "ray" in sys.modules:  # imported earlier in this process: make it read them again
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()
    try:
        # `ray start` gives its raylet a fixed 30 s to register, which a machine loaded by
        # the rest of the suite can miss: a failed start is cleaned up and tried again.
        failures = []
        for _attempt in range(START_ATTEMPTS):
            port, why = _start_head(temp_dir)
            if port:
                break
            failures.append(why.strip().splitlines()[-1] if why.strip() else "no output")
            _stop(temp_dir)
        assert port, f"ray start failed {START_ATTEMPTS} times: {failures}"
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        yield os.environ["RAY_ADDRESS"]
    finally:
        try:
            import ray

            ray.shutdown()
        finally:
            _stop(temp_dir)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(temp_dir, ignore_errors=True)
