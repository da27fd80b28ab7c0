"""The ``ray`` target: each run's job process runs on a node of a Ray cluster.

Nothing about a run changes on Ray: the very same job process as the ``local`` target
(``python -m jupyter_mlops.jobs.runner RUN_ID``) starts the kernel, executes the notebook with
papermill and writes logs, metrics and status into the workspace store, whose location it
receives from the submitter (database URL + artifact URL, in its environment). So the
workspace must be reachable from every node (PostgreSQL and object storage for a real
cluster; a shared folder or one machine otherwise) and jupyter-mlops installed on each node.

How a run maps onto Ray, and why:

- an *owner* actor per run, detached (it outlives the notebook kernel or CLI that submitted
  the run) and asking no resources (so it starts at once). It keeps the run's heartbeat while
  Ray queues the work, enforces a cancel the job does not obey, and records the ending of a
  job whose worker died (``failed``), so a run never stays active forever;
- a Ray *task* holding the run's resources (``num_cpus``, ``num_gpus`` from ``--gpus``): it
  spawns the runner with the GPUs Ray gave it (``CUDA_VISIBLE_DEVICES``) and waits for it.
  The runner dies with the task's worker (``PR_SET_PDEATHSIG``), so ``ray.cancel(force=True)``
  or a killed worker stops the job, and the resources go back to the cluster at once.

Configure in ``jupyter_mlops_config.py`` (``c.RayTarget.address = "ray://head:10001"``) or
with ``RAY_ADDRESS``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from traitlets import Float, Unicode, default

from .._processes import kill_tree, warn
from ..errors import InvalidInput, NotFound
from ..store import ACTIVE, HOSTNAME, TERMINAL
from ._base import Claim, Slot, SlotState, Target

if TYPE_CHECKING:
    from ..store import Backend

__all__ = ["ENV_RAY_ADDRESS", "ENV_RAY_IDLE", "RayTarget"]

ENV_RAY_ADDRESS = "RAY_ADDRESS"
ENV_RAY_IDLE = "JUPYTER_MLOPS_RAY_IDLE"  # seconds
OWNER_PREFIX = "mlops-run-"  # owner actors are named after their run, in our namespace


class RayTarget(Target):
    """Runs jobs as Ray tasks on a Ray cluster, with ``num_gpus`` from ``--gpus``."""

    name = "ray"

    address = Unicode(
        config=True,
        help=f"The Ray cluster: 'host:port', 'ray://host:10001' or 'auto' (default: "
        f"{ENV_RAY_ADDRESS}, else 'auto': the cluster started on this machine).",
    )
    namespace = Unicode(
        "jupyter-mlops", config=True,
        help="Ray namespace of the runs' owner actors (so they can be found by name).",
    )
    cpus_per_run = Float(
        1.0, config=True,
        help="CPUs a run holds on its node (its kernel's). With N CPUs, a node runs N//this "
        "runs at once; the rest wait in Ray's queue, their runs 'queued'.",
    )
    cancel_grace = Float(
        30.0, config=True,
        help="Seconds a canceled job gets to stop by itself before its Ray task is canceled "
        "by force (its worker and the job process tree are killed).",
    )

    idle_release = Float(
        config=True,
        help="Seconds this process stays connected to the cluster without using it before "
        "it disconnects, releasing the workers Ray keeps for it (default: "
        f"{ENV_RAY_IDLE} or 300). Runs hold their CPUs and GPUs only while they run.",
    )

    @default("address")
    def _address_default(self) -> str:
        return os.environ.get(ENV_RAY_ADDRESS, "").strip() or "auto"

    @default("idle_release")
    def _idle_release_default(self) -> float:
        raw = os.environ.get(ENV_RAY_IDLE, "").strip()
        try:
            return float(raw) if raw else 300.0
        except ValueError:
            raise InvalidInput(f"{ENV_RAY_IDLE} must be a number of seconds, got {raw!r}"
                               ) from None

    # -- connection -----------------------------------------------------------------------

    _connect_lock = threading.Lock()

    def connect(self) -> Any:
        """The ``ray`` module, connected to the cluster (once per process)."""
        try:
            import ray
        except ImportError:
            raise InvalidInput("target 'ray' needs Ray: pip install 'jupyter-mlops[ray]'"
                               ) from None
        with self._connect_lock:
            if not ray.is_initialized():
                self._check_reachable()
                try:
                    ray.init(address=self.address, namespace=self.namespace,
                             log_to_driver=False, logging_level="WARNING",
                             configure_logging=False)
                except Exception as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise InvalidInput(
                        f"cannot reach the Ray cluster at {self.address!r} ({first or exc!r}); "
                        f"start one with `ray start --head`, or set {ENV_RAY_ADDRESS} or "
                        "c.RayTarget.address") from None
            _connection.touch(self.idle_release)
        return ray

    def _check_reachable(self) -> None:
        """Fail in seconds when nothing listens at a ``host:port`` address (``ray.init``
        would retry for minutes)."""
        where = self.address.removeprefix("ray://")
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit():
            return  # "auto", or a form Ray resolves itself
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise InvalidInput(
                f"cannot reach the Ray cluster at {self.address!r} ({exc.strerror or exc}); "
                f"start one with `ray start --head`, or set {ENV_RAY_ADDRESS} or "
                "c.RayTarget.address") from None

    # -- the Target contract --------------------------------------------------------------

    def validate(self, gpus: int) -> None:
        if isinstance(gpus, bool) or not isinstance(gpus, int):
            raise InvalidInput(f"--gpus must be a whole number, got {gpus!r}")
        if gpus < 0:
            raise InvalidInput(f"--gpus must be 0 or more, got {gpus}")
        ray = self.connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        most = max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=0)
        if gpus > most:
            raise InvalidInput(
                f"--gpus {gpus} asks for more GPUs than any node of the Ray cluster at "
                f"{self.address!r} has (at most {most}); use --gpus {most} or add GPU nodes")

    def submit(self, backend: Backend, run_id: str, gpus: int = 0) -> None:
        """Start the run's owner actor (detached), which queues the run's task in Ray."""
        row = backend.store.get_run_row(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r} in {backend.location.directory}")
        if row["status"] != "queued":
            raise InvalidInput(f"run {run_id} is {row['status']}; only a queued run is submitted")
        ray = self.connect()
        # Recorded first: the task adds where it runs to this same entry once it starts.
        backend.store.merge_run_json(run_id, "resources", {"ray": {
            "address": self.address, "owner": OWNER_PREFIX + run_id, "gpus": gpus,
            "cpus": self.cpus_per_run}})
        owner = ray.remote(RunOwner).options(
            name=OWNER_PREFIX + run_id, namespace=self.namespace, lifetime="detached",
            num_cpus=0, max_concurrency=2, max_restarts=0)
        handle = owner.remote(run_id, backend.location.to_env(), gpus, self.cpus_per_run,
                              self.cancel_grace, backend.config.heartbeat_interval)
        handle.run.remote()  # fire and forget: the owner reports through the store
        # Beat once for the owner: the run stays alive while the actor starts.
        backend.store.heartbeat(run_id)

    def claim(self, backend: Backend, run_id: str, gpus: int, poll: float = 0.2) -> Claim:
        """Ray placed the job already: its slots are the GPUs Ray made visible to it."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        slots = [Slot("gpu", g) for g in visible.split(",") if g.strip()][:max(gpus, 0)]
        claim = Claim(run_id, slots)
        backend.store.merge_run_json(run_id, "resources", {
            "slots": [s.name for s in slots], "cuda_visible_devices": claim.cuda_visible_devices})
        return claim

    def cancel(self, backend: Backend, run_id: str, *, wait: bool = False) -> None:
        """Ask the run to stop. Its owner actor enforces it on the cluster (cancels the Ray
        task by force after ``cancel_grace``), so a short-lived caller need not stay;
        ``wait=True`` blocks until the run has ended."""
        store = backend.store
        if not store.set_status(run_id, "canceled", only_from=("queued",), error="canceled"):
            store.request_stop(run_id, "canceled by request")
        if not wait:
            return
        deadline = time.monotonic() + self.cancel_grace + 60
        while time.monotonic() < deadline:
            row = store.get_run_row(run_id)
            if row is None or row["status"] not in ACTIVE:
                return
            time.sleep(0.2)

    def slots(self, backend: Backend | None = None) -> list[SlotState]:
        """The cluster's GPUs, each with the run holding it (runs record node and GPU ids)."""
        states = []
        holders = _holders(backend)
        for node in self.nodes():
            for i in range(int(node["gpus"])):
                slot = Slot("gpu", f"{node['ip']}/{i}")
                run_id = holders.get(slot.id)
                states.append(SlotState(slot, run_id is not None, run_id))
        return states

    # -- views ----------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes: ip, id, CPUs and GPUs in all and free now."""
        ray = self.connect()
        free_by_node: dict[str, dict[str, float]] = {}
        with contextlib.suppress(Exception):
            free_by_node = ray._private.state.available_resources_per_node()
        out = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            res, free = n["Resources"], free_by_node.get(n["NodeID"], {})
            out.append({"id": n["NodeID"], "ip": n["NodeManagerAddress"],
                        "cpus": res.get("CPU", 0.0), "cpus_free": free.get("CPU", 0.0),
                        "gpus": res.get("GPU", 0.0), "gpus_free": free.get("GPU", 0.0)})
        return out

    def describe(self, backend: Backend) -> list[dict[str, Any]]:
        """Rows for ``targets``: one per node (CPUs, GPUs), then one per active Ray run (where
        it runs and on which GPUs)."""
        rows: list[dict[str, Any]] = []
        for node in self.nodes():
            rows.append({
                "target": self.name, "slot": f"node {node['ip']}", "held":
                node["cpus_free"] < node["cpus"] or node["gpus_free"] < node["gpus"],
                "run_id": None,
                "detail": f"CPU {node['cpus'] - node['cpus_free']:g}/{node['cpus']:g} used, "
                          f"GPU {node['gpus'] - node['gpus_free']:g}/{node['gpus']:g} used"})
        active = [r for r in backend.store.list_runs(status=ACTIVE) if r["target"] == self.name]
        held_cpus = sum(((r["resources"] or {}).get("ray") or {}).get("cpus", 0) for r in active
                        if r["status"] != "queued")
        held_gpus = sum(((r["resources"] or {}).get("ray") or {}).get("gpus", 0) for r in active
                        if r["status"] != "queued")
        rows.append({
            "target": self.name, "slot": "reserved", "held": bool(held_cpus or held_gpus),
            "run_id": None,
            "detail": f"runs hold CPU {held_cpus:g}, GPU {held_gpus:g}, each released when its "
                      f"run ends (nothing is kept warm); this process disconnects after "
                      f"{self.idle_release:g} s unused"})
        for row in active:
            ray_info = (row["resources"] or {}).get("ray", {})
            gpus = (row["resources"] or {}).get("cuda_visible_devices") or ""
            where = (f"on {ray_info['node_ip']}" if ray_info.get("node_ip")
                     else "waiting for Ray resources")
            rows.append({
                "target": self.name, "slot": f"run {row['id']}", "held": True,
                "run_id": row["id"],
                "detail": f"{row['status']} {where}"
                          + (f", GPU {gpus}" if gpus else "")
                          + (f", worker pid {ray_info['worker_pid']}"
                             if ray_info.get("worker_pid") else "")})
        return rows


class _Connection:
    """This process's connection to the cluster, closed after ``idle`` seconds unused
    (scale to zero: Ray keeps worker processes for a connected driver). A daemon thread
    watches it; the next use connects again."""

    def __init__(self) -> None:
        self.last_use = 0.0
        self.idle = 300.0
        self.released = 0  # how many times it was closed for being idle
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def touch(self, idle: float) -> None:
        with self._lock:
            self.last_use, self.idle = time.monotonic(), idle
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="mlops-ray-idle")
                self._watcher.start()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_use

    def _watch(self) -> None:
        import ray

        while True:
            time.sleep(max(min(self.idle - self.idle_for(), 5.0), 0.2))
            with RayTarget._connect_lock, self._lock:
                if not ray.is_initialized():
                    self._watcher = None
                    return
                if self.idle_for() >= self.idle:
                    ray.shutdown()
                    self.released += 1
                    self._watcher = None
                    return


_connection = _Connection()


def _holders(backend: Backend | None) -> dict[str, str]:
    """``"ip/gpu"`` -> the active Ray run holding that GPU."""
    if backend is None:
        return {}
    held = {}
    for row in backend.store.list_runs(status=ACTIVE):
        if row["target"] != RayTarget.name:
            continue
        resources = row["resources"] or {}
        ip = resources.get("ray", {}).get("node_ip")
        for gpu in (resources.get("cuda_visible_devices") or "").split(","):
            if ip and gpu.strip():
                held[f"{ip}/{gpu.strip()}"] = row["id"]
    return held


# -- on the cluster -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the runner, before exec: be killed when the Ray worker that started it dies
    (Linux ``PR_SET_PDEATHSIG``), so a killed or force-canceled worker ends the job too."""
    from .agent import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)


def run_job(run_id: str, env: dict[str, str]) -> int:
    """The Ray task of a run: the same job process as the local target, on this node,
    with the GPUs Ray assigned; returns its exit code."""
    import ray

    from ..store import Backend

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    job_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}
    os.environ.update(env)
    backend = Backend.open()
    folder = backend.staging_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    context = ray.get_runtime_context()
    row = backend.store.get_run_row(run_id) or {}
    submitted = (row.get("resources") or {}).get("ray") or {}  # what submit() recorded
    backend.store.merge_run_json(run_id, "resources", {"ray": {
        **submitted, "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(), "worker_pid": os.getpid(),
        "gpu_ids": gpu_ids}})
    with open(folder / "runner.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_mlops.jobs.runner", run_id], env=job_env,
            cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
    return process.wait()


class RunOwner:
    """The detached actor that owns one run's Ray task (see the module docstring)."""

    def __init__(self, run_id: str, env: dict[str, str], gpus: int, cpus: float,
                 cancel_grace: float, heartbeat_interval: float):
        os.environ.update(env)  # this worker process serves this actor only
        from ..store import Backend

        self.run_id, self.env = run_id, env
        self.gpus, self.cpus = gpus, cpus
        self.cancel_grace, self.beat = cancel_grace, heartbeat_interval
        self.backend = Backend.open()
        self.task: Any = None

    def run(self) -> None:
        import ray

        try:
            self._own(ray)
        except Exception as exc:  # never leave the run active because its owner failed
            warn(f"jupyter-mlops: the Ray owner of run {self.run_id} failed: {exc}")
            self.backend.store.set_status(self.run_id, "failed", only_from=ACTIVE,
                                          error=f"the Ray owner of the run failed: {exc}")
        finally:
            ray.actor.exit_actor()

    def _own(self, ray: Any) -> None:
        store = self.backend.store
        task = ray.remote(run_job).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
            name=f"mlops-job-{self.run_id}")
        self.task = task.remote(self.run_id, self.env)
        stop_seen: float | None = None
        while True:
            done, _ = ray.wait([self.task], timeout=min(self.beat, 1.0))
            if done:
                break
            row = store.get_run_row(self.run_id)
            if row is None:
                continue
            if row["status"] in TERMINAL:
                if row["status"] == "canceled" and not row["pid"]:
                    ray.cancel(self.task, force=True)  # canceled before it ever started
                    return
                continue  # the job wrote its ending and is exiting
            if row["status"] == "queued":
                store.heartbeat(self.run_id)  # waiting in Ray's queue is not being lost
            if row["cancel_requested_at"]:
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > self.cancel_grace:
                    self._force_cancel(ray, row)
                    return
        try:
            code = ray.get(self.task)
        except Exception as exc:  # the worker died: killed, out of memory, node lost
            reason = type(exc).__name__
            self._ended_without_word(f"the Ray worker running the job died ({reason})")
            return
        if code != 0:
            self._ended_without_word(f"the job process exited with code {code} on Ray")

    def _force_cancel(self, ray: Any, row: dict[str, Any]) -> None:
        ray.cancel(self.task, force=True)
        self._kill_kernel(row)
        request = self.backend.store.stop_request(self.run_id) or ""
        self.backend.store.set_status(
            self.run_id, "pruned" if request.startswith("pruned") else "canceled",
            error=f"{request or 'canceled'}: the job did not stop within "
            f"{self.cancel_grace:g} s of the request, so its Ray task was canceled by force")

    def _ended_without_word(self, reason: str) -> None:
        """Record ``failed`` for a job that died without writing its ending (a no-op when
        it did write one), and stop the kernel it left behind on this host."""
        store = self.backend.store
        row = store.get_run_row(self.run_id)
        if row is None or row["status"] not in ACTIVE:
            return
        if store.set_status(self.run_id, "failed", only_from=ACTIVE, error=reason):
            self._kill_kernel(row)

    @staticmethod
    def _kill_kernel(row: dict[str, Any]) -> None:
        kernel = (row["resources"] or {}).get("kernel_pid")
        if kernel and row["host"] in (HOSTNAME, socket.gethostname()):
            kill_tree(kernel)  # an orphaned kernel would keep its GPU memory
