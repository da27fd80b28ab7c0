"""The ``ray`` target on a real local Ray cluster (``ray start --head`` on loopback, 2 CPUs and
one logical GPU: ``--num-gpus 1`` registers a GPU on a CPU-only machine, so placement with
``num_gpus`` and the ``CUDA_VISIBLE_DEVICES`` Ray sets are real, only no CUDA is behind it).

The cluster is this module's: free ports, its own temp dir and token, stopped by the PIDs of
its processes (``ray stop`` would stop every Ray cluster of the machine).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from ._ray_cluster import _free_port, ray_cluster  # noqa: F401
from .conftest import PYTHON, cli, make_notebook, wait_until
from .test_artifacts_s3 import CREDENTIALS, s3_endpoint, s3_keys, s3_ws  # noqa: F401

# Not imported here: Ray reads its authentication settings when first imported, and the
# fixture sets them (a token of its own) before that.
# The test extra installs Ray: a missing one is a broken install, not a reason to skip.
if importlib.util.find_spec("ray") is None:
    raise ImportError("Ray is not installed: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def ray_ws(ray_cluster: str, ws):  # noqa: F811
    yield ws


def test_train_on_ray_runs_the_job_on_the_cluster_with_a_gpu(ray_ws, monkeypatch) -> None:
    """``%%train --target ray --gpus 1`` end to end: logs, metrics and artifacts in the
    store, and the GPU Ray placed the task on is the one the kernel sees."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    saved = dict(shell.user_ns)
    shell.user_ns["scale"] = 1.0  # carried to the job through the artifact store
    try:
        run = shell.run_cell_magic(
            "train", "--target ray --gpus 1 --name on-ray",
            "import os, jupyter_mlops as mlops\n"
            "print('cuda', repr(os.environ.get('CUDA_VISIBLE_DEVICES')))\n"
            "for step in range(3):\n    mlops.log('loss', scale / (step + 1), step=step)\n"
            "(mlops.outputs_dir() / 'model.txt').write_text('w')\n")
    finally:
        shell.user_ns.clear()
        shell.user_ns.update(saved)
    assert run.wait(timeout=180).status == "completed", run.info()["error"]
    assert run.metric_history("loss")["value"].tolist() == [1.0, 0.5, 1.0 / 3]
    assert "cuda '0'" in run.logs()
    assert "outputs/model.txt" in {a["path"] for a in run.artifacts()}
    resources = run.info()["resources"]
    assert resources["slots"] == ["gpu:0"] and resources["ray"]["gpu_ids"] == ["0"]
    assert run.info()["target"] == "ray"

    # The default target comes from JUPYTER_MLOPS_TARGET: this run goes to Ray unasked.
    monkeypatch.setenv("JUPYTER_MLOPS_TARGET", "ray")
    again = ray_ws.submit("print('default target')", name="default", namespace={})
    assert again.wait(timeout=180).status == "completed", again.info()["error"]
    assert again.info()["target"] == "ray" and "node_ip" in again.info()["resources"]["ray"]


def test_bad_requests_on_ray_fail_at_submission(ray_ws) -> None:
    import jupyter_mlops as mlops

    with pytest.raises(mlops.InvalidInput, match="more GPUs than any node"):
        ray_ws.submit("print(1)", target="ray", gpus=2, namespace={})
    assert ray_ws.runs() == []


def test_an_unused_connection_is_released(ray_ws, monkeypatch) -> None:
    """Scale to zero: this process disconnects from the cluster once unused for
    ``JUPYTER_MLOPS_RAY_IDLE`` seconds, and connects again when next used."""
    import ray

    from jupyter_mlops.compute import get_target

    monkeypatch.setenv("JUPYTER_MLOPS_RAY_IDLE", "1")
    target = get_target("ray")
    target.validate(0)
    assert ray.is_initialized()
    wait_until(lambda: not ray.is_initialized(), timeout=60, what="the idle disconnect")
    monkeypatch.setenv("JUPYTER_MLOPS_RAY_IDLE", "300")
    get_target("ray").validate(1)  # used again: connected again
    assert ray.is_initialized()


def test_cancel_and_a_killed_worker_end_ray_runs(ray_ws, tmp_path: Path) -> None:
    """Cancel stops the job on Ray; a Ray worker killed mid-run ends its run ``failed``
    (never stuck active), and the runner it started dies with it."""
    code = ("import time, jupyter_mlops as mlops\nmlops.log('started', 1.0)\n"
            "print('going', flush=True)\ntime.sleep(600)")
    victim = ray_ws.submit(code, name="victim", target="ray", namespace={})
    canceled = ray_ws.submit(code, name="canceled", target="ray", namespace={})
    for run in (victim, canceled):
        wait_until(lambda r=run: "going" in r.logs(), timeout=180, what=f"{run.name} to start")

    # Both CPUs are taken: a third run waits in Ray's queue, alive and queued.
    waiting = ray_ws.submit("print('never')", name="waiting", target="ray", namespace={})

    # `targets` shows the node with its CPUs/GPU and which run runs where.
    listing = cli("targets")
    assert listing.returncode == 0, listing.stderr
    assert "target ray:" in listing.stdout and "CPU 2/2 used" in listing.stdout
    assert f"run {victim.id}" in listing.stdout and "running on" in listing.stdout
    assert "runs hold CPU 2, GPU 0" in listing.stdout, listing.stdout
    assert f"run {waiting.id}" in listing.stdout and "waiting for Ray resources" in listing.stdout
    assert waiting.status == "queued"
    waiting.cancel()  # canceled while queued: its pending task is withdrawn, it never starts
    assert waiting.status == "canceled"

    canceled.cancel()
    wait_until(lambda: canceled.status == "canceled", timeout=120, what="the cancel")
    assert canceled.metrics() == {"started": 1.0}

    info = victim.info()
    worker, runner = info["resources"]["ray"]["worker_pid"], info["pid"]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: victim.status in ("failed", "lost"), timeout=120,
               what="the killed worker's run to end")
    assert "died" in (victim.info()["error"] or "")
    wait_until(lambda: not psutil.pid_exists(runner)
               or psutil.Process(runner).status() == psutil.STATUS_ZOMBIE,
               timeout=60, what="the runner to die with its worker")
    # Both CPUs are back: a new run starts at once.
    after = ray_ws.submit("print('after')", name="after", target="ray", namespace={})
    assert after.wait(timeout=180).status == "completed", after.info()["error"]
    assert waiting.info()["started_at"] is None and "never" not in waiting.logs()
    # Nothing stays reserved: every run's owner actor has exited.
    import ray

    def owners_gone() -> bool:
        for run in (victim, canceled, waiting, after):
            try:
                ray.get_actor(f"mlops-run-{run.id}", namespace="jupyter-mlops")
            except ValueError:
                continue
            return False
        return True

    wait_until(owners_gone, timeout=60, what="the runs' owner actors to exit")


def test_sweep_and_cli_run_on_ray(ray_ws, tmp_path: Path) -> None:
    """A sweep's trials go to Ray two at a time; ``jupyter mlops run --target ray`` too."""
    notebook = make_notebook(
        tmp_path / "train.ipynb",
        "import time, jupyter_mlops as mlops\ntime.sleep(1)\nmlops.log('score', x * 2)",
        parameters="x = 0")
    sweep = ray_ws.sweep(str(notebook), params={"x": "choice(1, 2, 3, 4)"}, metric="score",
                         sampler="grid", trials=4, concurrency=2, target="ray", seed=0,
                         name="ray-sweep")
    sweep.wait(timeout=300)
    rows = sweep.trial_rows()
    assert sorted(r["status"] for r in rows) == ["completed"] * 4
    assert {r["target"] for r in rows} == {"ray"}
    assert all((r["resources"] or {}).get("ray", {}).get("node_ip") for r in rows)
    assert sweep.best_run.metrics()["score"] == 8

    done = cli("run", str(notebook), "-p", "x", "5", "--target", "ray", "--name", "cli-ray")
    assert done.returncode == 0, done.stderr
    run = ray_ws.get_run("cli-ray")
    assert run.info()["target"] == "ray" and run.metrics()["score"] == 10


def test_a_ray_job_with_artifacts_on_s3(ray_cluster, s3_ws) -> None:  # noqa: F811
    """Artifacts only on S3 (moto's server mode, the only S3-compatible server installable
    here): the job on Ray gets the workspace location (artifact URL and endpoint) from the
    submitter and writes its outputs there, never to the local folder (the fixture checks).
    Its inputs (cell notebook, carried names) are in S3 too, where a job on another node
    fetches them; on this one machine it may find them already staged."""
    ws = s3_ws["ws"]
    run = ws.submit("import jupyter_mlops as mlops\nmlops.log('k', k * 2)\n"
                    "(mlops.outputs_dir() / 'out.txt').write_text(str(k))",
                    name="ray-s3", target="ray", namespace={"k": 21})
    assert run.wait(timeout=180).status == "completed", run.info()["error"]
    assert run.metrics()["k"] == 42
    keys = s3_keys(s3_ws["endpoint"], s3_ws["prefix"])
    assert f"{s3_ws['prefix']}/runs/{run.id}/outputs/out.txt" in keys
    assert f"{s3_ws['prefix']}/runs/{run.id}/job/carried/k.pkl" in keys


def test_unreachable_cluster_says_what_to_do(ws, monkeypatch) -> None:
    """Runs in a child process: this one may already be connected to the module's cluster."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    out = subprocess.run(
        [PYTHON, "-c", "import jupyter_mlops as m, sys\n"
         "try:\n    m.workspace().submit('1', target='ray', namespace={})\n"
         "except m.InvalidInput as e:\n    print('refused:', e); sys.exit(3)"],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cannot reach the Ray cluster" in out.stdout and "ray start --head" in out.stdout
