"""The local target: slot inventory, claims across real processes, FIFO queue, cancel.

Claims are exercised by small helper processes (no notebooks, no kernels): each waits for
its slots exactly as a job process would, reports what it got, and holds the slots until the
test drops a "release" file. GPUs are simulated with ``JUPYTER_MLOPS_GPUS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_mlops.compute import (
    ClaimCanceled,
    LocalTarget,
    Slot,
    SlotState,
    get_target,
)
from jupyter_mlops.compute.local import ENV_CPU_SLOTS, ENV_GPUS
from jupyter_mlops.errors import InvalidInput
from jupyter_mlops.store import new_run_id
from jupyter_mlops.store import HOSTNAME

from .conftest import PYTHON, wait_until

HELPER = """
import json, sys, time
from pathlib import Path

import jupyter_mlops as mlops
from jupyter_mlops.compute import ClaimCanceled, LocalTarget

run_id, gpus, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
ws = mlops.workspace()
try:
    claim = LocalTarget().claim(ws.backend, run_id, gpus=gpus, poll=0.05)
except ClaimCanceled as exc:
    result = {"canceled": str(exc)}
else:
    # What the job runner does next: leaving "queued" lets the next run in line go ahead.
    ws.store.set_status(run_id, "running", only_from=("queued",))
    result = {"cvd": claim.cuda_visible_devices, "env": claim.env(),
              "slots": [s.name for s in claim.slots], "at": time.time()}
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(result))
tmp.replace(out)
if "canceled" in result:
    sys.exit(3)
while not out.with_suffix(".release").exists():
    time.sleep(0.05)
claim.release()
ws.store.set_status(run_id, "completed")
"""


class Jobs:
    """Queued runs and the helper processes that claim slots for them."""

    def __init__(self, ws: Any, folder: Path):
        self.ws, self.folder = ws, folder
        self.script = folder / "claim_helper.py"
        self.script.write_text(HELPER)
        self.procs: dict[str, subprocess.Popen] = {}

    def queue(self, name: str) -> str:
        run_id = new_run_id()
        self.ws.store.create_run(
            run_id, name, "compute", status="queued", target="local", host=HOSTNAME,
            pid=os.getpid(),
        )
        time.sleep(0.005)  # distinct created_at: the queue order is the creation order
        return run_id

    def start(self, run_id: str, gpus: int = 0) -> subprocess.Popen:
        proc = subprocess.Popen(
            [PYTHON, str(self.script), run_id, str(gpus), str(self._out(run_id))],
            cwd=self.folder,
        )
        self.procs[run_id] = proc
        return proc

    def _out(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.json"

    def result(self, run_id: str) -> dict[str, Any] | None:
        out = self._out(run_id)
        return json.loads(out.read_text()) if out.exists() else None

    def wait_result(self, run_id: str) -> dict[str, Any]:
        return wait_until(lambda: self.result(run_id), 30, f"run {run_id} to claim")

    def wait_registered(self, run_id: str) -> None:
        """Until the helper's claim is waiting (it records its pid and a heartbeat)."""
        proc = self.procs[run_id]
        wait_until(lambda: (self.row(run_id)["pid"] == proc.pid
                            and self.row(run_id)["heartbeat_at"]), 30,
                   f"run {run_id} to start waiting")

    def release(self, run_id: str) -> None:
        self._out(run_id).with_suffix(".release").touch()
        assert self.procs[run_id].wait(timeout=30) == 0

    def row(self, run_id: str) -> dict[str, Any]:
        return self.ws.store.get_run_row(run_id)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def jobs(ws: Any, tmp_path: Path) -> Iterator[Jobs]:
    helper = Jobs(ws, tmp_path)
    yield helper
    helper.close()


@pytest.fixture
def one_cpu_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_GPUS, "")  # no GPU, and nvidia-smi is not asked
    monkeypatch.setenv(ENV_CPU_SLOTS, "1")


def test_two_gpus_three_jobs_the_third_waits_for_a_freed_gpu(
    ws: Any, jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_GPUS, "0,1")
    a, b, c = (jobs.queue(name) for name in ("a", "b", "c"))
    for run_id in (a, b, c):
        jobs.start(run_id, gpus=1)

    got_a, got_b = jobs.wait_result(a), jobs.wait_result(b)
    assert (got_a["cvd"], got_b["cvd"]) == ("0", "1")  # distinct devices, in queue order
    assert got_a["env"] == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert jobs.row(a)["resources"] == {"slots": ["gpu:0"], "cuda_visible_devices": "0"}

    # The third waits, still queued, with a live heartbeat and no slot.
    jobs.wait_registered(c)
    time.sleep(0.5)  # ten of its polls: it had every chance to take a slot
    assert jobs.result(c) is None
    assert jobs.row(c)["status"] == "queued" and jobs.row(c)["resources"] is None
    assert LocalTarget().slots(ws.backend) == [
        SlotState(Slot("gpu", "0"), held=True, run_id=a),
        SlotState(Slot("gpu", "1"), held=True, run_id=b),
    ]

    jobs.release(b)
    got_c = jobs.wait_result(c)
    assert got_c["cvd"] == "1" and got_c["slots"] == ["gpu:1"]
    assert jobs.row(b)["status"] == "completed"
    jobs.release(a)
    jobs.release(c)
    assert [s.held for s in LocalTarget().slots(ws.backend)] == [False, False]


def test_a_killed_holder_frees_its_slot(
    ws: Any, jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_GPUS, "0")
    holder, waiter = jobs.queue("holder"), jobs.queue("waiter")
    victim = jobs.start(holder, gpus=1)
    assert jobs.wait_result(holder)["cvd"] == "0"
    jobs.start(waiter, gpus=1)
    jobs.wait_registered(waiter)
    assert jobs.result(waiter) is None

    victim.send_signal(signal.SIGKILL)  # no cleanup code runs: only the OS frees the lock
    victim.wait()
    assert jobs.wait_result(waiter)["cvd"] == "0"
    assert LocalTarget().slots(ws.backend) == [SlotState(Slot("gpu", "0"), held=True, run_id=waiter)]
    jobs.release(waiter)


def test_fifo_the_slot_goes_to_runs_in_creation_order(
    ws: Any, jobs: Jobs, one_cpu_slot: None
) -> None:
    order = [jobs.queue(f"r{i}") for i in range(3)]
    for run_id in reversed(order):  # started newest first: start order must not matter
        jobs.start(run_id, gpus=0)
    times = []
    for expected in order:
        wait_until(lambda: any(jobs.result(r) for r in order if r not in times), 30,
                   "the next run to claim the slot")
        claimed = [r for r in order if jobs.result(r)]
        assert claimed == order[: len(times) + 1], "a run jumped the queue"
        got = jobs.result(expected)
        assert got["slots"] == ["cpu:0"] and got["cvd"] == "" and got["env"] == {
            "CUDA_VISIBLE_DEVICES": ""}
        times.append(expected)
        jobs.release(expected)
    assert [jobs.row(r)["status"] for r in order] == ["completed"] * 3


def test_dead_or_silent_queued_runs_do_not_block_the_queue(ws: Any, jobs: Jobs,
                                                           one_cpu_slot: None) -> None:
    finished = subprocess.Popen([PYTHON, "-c", "pass"])
    finished.wait()
    dead = jobs.queue("dead")  # its job registered, then died
    ws.store.update_run(dead, pid=finished.pid, heartbeat_at=time.time())
    silent = jobs.queue("silent")  # no heartbeat for longer than lost_after
    ws.store.update_run(silent, pid=None, host=None, heartbeat_at=time.time() - 120)
    live = jobs.queue("live")

    started = time.monotonic()
    with LocalTarget().claim(ws.backend, live, gpus=0, poll=0.05) as claim:
        assert claim.slots == [Slot("cpu", "0")]
        assert time.monotonic() - started < 10
        assert LocalTarget().slots(ws.backend)[0].held
    assert claim.released and not LocalTarget().slots(ws.backend)[0].held

    assert jobs.row(dead)["status"] == "lost"
    assert f"pid {finished.pid}" in jobs.row(dead)["error"]
    assert jobs.row(silent)["status"] == "lost"
    assert "heartbeat" in jobs.row(silent)["error"]


def test_cancel_while_waiting_raises_claim_canceled(ws: Any, jobs: Jobs,
                                                    one_cpu_slot: None) -> None:
    target = LocalTarget()
    holder, waiter, stopper = (jobs.queue(n) for n in ("holder", "waiter", "stopper"))
    held = target.claim(ws.backend, holder, gpus=0)
    ws.store.set_status(holder, "running", only_from=("queued",))

    outcome: dict[str, BaseException] = {}

    def wait_for_slot(run_id: str) -> None:
        try:
            target.claim(ws.backend, run_id, gpus=0, poll=0.05)
        except BaseException as exc:
            outcome[run_id] = exc

    threads = [threading.Thread(target=wait_for_slot, args=(r,)) for r in (waiter, stopper)]
    for thread in threads:
        thread.start()
    wait_until(lambda: jobs.row(waiter)["heartbeat_at"] and jobs.row(stopper)["heartbeat_at"])
    assert all(t.is_alive() for t in threads)

    target.cancel(ws.backend, waiter)  # a queued run is canceled at once
    # A cancel request recorded while the run is still queued (a race with the runner).
    ws.store.update_run(stopper, cancel_requested_at=time.time())
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(outcome[waiter], ClaimCanceled)
    assert "canceled" in str(outcome[waiter])
    assert isinstance(outcome[stopper], ClaimCanceled)
    assert jobs.row(waiter)["status"] == "canceled"
    assert ws.get_run(waiter).status == "canceled"
    held.release()


def test_cancel_kills_a_job_that_does_not_stop(ws: Any) -> None:
    stubborn = subprocess.Popen(
        [PYTHON, "-c", "import signal, subprocess, time; signal.signal(signal.SIGINT, "
         "signal.SIG_IGN); subprocess.Popen(['sleep', '60']); time.sleep(60)"],
        start_new_session=True,
    )
    try:
        child = wait_until(lambda: psutil.Process(stubborn.pid).children(), 60)[0]
        run_id = new_run_id()
        ws.store.create_run(run_id, "stubborn", "compute", status="running", target="local",
                            host=HOSTNAME, pid=stubborn.pid, started_at=time.time())
        LocalTarget(cancel_grace=0.3).cancel(ws.backend, run_id, wait=True)
        # (psutil reaps what it kills, so the exit code Popen sees is not the signal.)
        stubborn.wait(timeout=60)
        assert not psutil.pid_exists(stubborn.pid)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        row = ws.store.get_run_row(run_id)
        assert row["status"] == "canceled" and "killed" in row["error"]
    finally:
        if stubborn.poll() is None:
            stubborn.kill()


def test_validate_gives_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_GPUS, "0,1")
    two = LocalTarget()
    two.validate(0)
    two.validate(2)
    with pytest.raises(InvalidInput, match=r"--gpus 3 asks for more GPUs than target 'local' "
                       r"has \(2: gpu:0, gpu:1\)"):
        two.validate(3)
    with pytest.raises(InvalidInput, match="0 or more"):
        two.validate(-1)

    monkeypatch.setenv(ENV_GPUS, "")
    none = LocalTarget()
    none.validate(0)
    with pytest.raises(InvalidInput, match=r"target 'local' has no GPUs .*configure "
                       r"LocalTarget.gpus or JUPYTER_MLOPS_GPUS"):
        none.validate(1)
    assert none.inventory() == [Slot("cpu", "0")]
    with pytest.raises(InvalidInput, match="unknown target 'nope'; known targets: local"):
        get_target("nope")


def test_gpu_inventory_from_nvidia_smi_config_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1b2c)"\n'
        'echo "  MIG 1g.5gb     Device  0: (UUID: MIG-3d4e)"\n'
        'echo "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5f6a)"\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(ENV_GPUS, raising=False)
    assert LocalTarget().gpu_ids() == ["0", "1"]

    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    monkeypatch.setenv(ENV_CPU_SLOTS, "3")
    failing = LocalTarget()
    assert failing.gpu_ids() == []
    assert [s.name for s in failing.inventory()] == ["cpu:0", "cpu:1", "cpu:2"]

    monkeypatch.setenv(ENV_GPUS, "2")
    assert LocalTarget().gpu_ids() == ["2"]  # the variable wins over nvidia-smi
    assert LocalTarget(gpus=["7"]).gpu_ids() == ["7"]  # configuration wins over both
    assert LocalTarget(cpu_slots=2).cpu_slots == 2
