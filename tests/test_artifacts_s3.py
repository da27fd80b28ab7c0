"""The whole loop with artifacts on an S3 API: tracking, a real job (real kernel), the model
registry, an endpoint, the REST download, the CLI, and a missing bucket.

The S3 server is moto's server mode (``moto_server``, a real HTTP server speaking the S3
API), reached through s3fs: it is the only S3-compatible server installable here
(``pip install "moto[server]" s3fs``, both in the ``test`` extra). It runs as a separate
process for the module; each test gets its own prefix in one bucket.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import jupyter_mlops as mlops
import jupyter_mlops.tracking as tracking
from jupyter_mlops.api import _workspace
from jupyter_mlops.errors import WorkspaceError

from .conftest import cli, wait_until

pytest_plugins = ("pytest_jupyter.jupyter_server",)

BUCKET = "mlops-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process on a free loopback port, with one bucket."""
    for _attempt in range(3):  # another process may take the port between bind and start
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda s=server, u=url: s.poll() is not None or _answers(u), 120,
                   "moto_server")
        if server.poll() is None:
            break
    else:
        pytest.fail("moto_server did not start")
    try:
        client = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing",
                              aws_secret_access_key="testing-secret", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    """Every object under ``prefix``, read with boto3 (not through the code under test)."""
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing-secret", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture
def s3_ws(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[dict[str, Any]]:
    """A workspace whose database is local and whose artifacts live only at
    ``s3://mlops-test/<unique prefix>``, set in ``jupyter_mlops_config.py`` of the current
    folder: jobs and scoring servers start in other folders, so they can only know the
    store's URL and endpoint from what the workspace hands them."""
    prefix = f"ws-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "ws"
    (tmp_path / "jupyter_mlops_config.py").write_text(
        f"c.WorkspaceConfig.artifact_url = 's3://{BUCKET}/{prefix}'\n"
        f"c.WorkspaceConfig.artifact_options = {{'endpoint_url': '{s3_endpoint}'}}\n")
    for name, value in {**CREDENTIALS, "JUPYTER_MLOPS_WORKSPACE": str(folder)}.items():
        monkeypatch.setenv(name, value)
    for name in ("JUPYTER_MLOPS_DATABASE_URL", "JUPYTER_MLOPS_ARTIFACT_URL",
                 "JUPYTER_MLOPS_ARTIFACT_OPTIONS", "FSSPEC_S3_ENDPOINT_URL", tracking.ENV_RUN_ID):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        ws = mlops.workspace()
        assert ws.location.artifact_url == f"s3://{BUCKET}/{prefix}"
        yield {"ws": ws, "dir": folder, "prefix": prefix, "endpoint": s3_endpoint,
               "tmp": tmp_path}
    finally:
        for opened in list(_workspace._cache.values()):
            opened.store.close()
        _workspace._cache.clear()
    assert not (folder / "artifacts").exists(), "an artifact was written to the local folder"


def test_inline_run_artifacts_round_trip_through_s3(s3_ws) -> None:
    prefix = s3_ws["prefix"]
    with mlops.start_run("inline", experiment="s3") as run:
        mlops.log("loss", 0.5)
        (mlops.outputs_dir() / "sub").mkdir()
        (mlops.outputs_dir() / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 5000)
        mlops.log_image("curve", __import__("numpy").zeros((8, 8, 3), dtype="uint8"))
    paths = {a["path"] for a in run.artifacts()}
    assert "outputs/sub/weights.bin" in paths and any(p.startswith("images/") for p in paths)
    keys = s3_keys(s3_ws["endpoint"], prefix)
    assert f"{prefix}/runs/{run.id}/outputs/sub/weights.bin" in keys
    copy = run.download("outputs/sub/weights.bin", s3_ws["tmp"] / "dl")
    assert copy.read_bytes() == b"\x00\x01" * 5000
    listed = cli("runs", "show", run.id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert "outputs/sub/weights.bin" in listed.stdout


def test_a_job_takes_its_inputs_from_s3_and_leaves_its_results_there(s3_ws) -> None:
    from jupyter_mlops.jobs._spec import JobSpec, fetch_inputs
    from jupyter_mlops.store import Backend, WorkspaceLocation

    ws, prefix, tmp = s3_ws["ws"], s3_ws["prefix"], s3_ws["tmp"]
    (tmp / "pets").mkdir()
    (tmp / "pets" / "cats.csv").write_text("name\ntom\n")
    pets = ws.datasets.register("pets", tmp / "pets", copy=True)  # a snapshot, kept in S3

    def scale(x):  # a notebook function, carried to the job as a pickle
        return 0.25 * x

    code = ("import jupyter_mlops as mlops\n"
            "rows = (mlops.dataset('pets') / 'cats.csv').read_text().split()\n"
            "mlops.log('acc', scale(factor))\n"
            "(mlops.outputs_dir() / 'model.txt').write_text(f'factor={factor} rows={rows}')\n"
            "answer = {'rows': len(rows)}\n")
    run = ws.submit(code, params={"factor": 3}, name="job", experiment="s3",
                    namespace={"scale": scale}, datasets=["pets"], outputs=["answer"])
    run.wait(timeout=240)
    assert run.status == "completed", run.logs()
    assert run.metrics()["acc"] == 0.75
    assert run.outputs("answer") == {"answer": {"rows": 2}}  # %%train --outputs, from S3
    assert [d.ref for d in run.inputs()] == [pets.ref]
    keys = s3_keys(s3_ws["endpoint"], f"{prefix}/runs/{run.id}/")
    for rel in ("job/spec.json", "job/input.ipynb", "job/carried/scale.pkl",
                "outputs/model.txt", "notebook.ipynb"):
        assert f"{prefix}/runs/{run.id}/{rel}" in keys, keys
    assert not ws.backend.staging_dir(run.id).exists()  # the job's local folder is gone
    with run.open_artifact("outputs/model.txt")[0] as handle:
        assert handle.read() == b"factor=3 rows=['name', 'tom']"
    with run.open_artifact("notebook.ipynb")[0] as handle:
        assert "scale(factor)" in handle.read().decode()

    # Another node: its own local folder, the same database and artifact URL. What a job
    # needs reaches it from S3, never from the submitter's disk.
    here = ws.location
    there = WorkspaceLocation(s3_ws["tmp"] / "other-node", here.database_url,
                              here.artifact_url, here.artifact_options)
    node = Backend(there, ws.config)
    try:
        spec = JobSpec.load(node, run.id)
        assert spec.parameters == {"factor": 3}
        folder = fetch_inputs(node, spec)
        assert folder.is_relative_to(s3_ws["tmp"] / "other-node")
        assert "scale(factor)" in (folder / "input.ipynb").read_text()
        assert (folder / "carried" / "scale.pkl").stat().st_size > 0
    finally:
        node.store.close()


def test_a_sweeps_trials_share_carried_names_stored_once_in_s3(s3_ws) -> None:
    from jupyter_mlops.jobs._spec import JobSpec, fetch_inputs
    from jupyter_mlops.store import Backend, WorkspaceLocation

    ws, prefix = s3_ws["ws"], s3_ws["prefix"]

    def offset():  # carried to the trials, stored once for the sweep
        return 1.0

    sweep = ws.sweep("import jupyter_mlops as mlops\nmlops.log('score', x + offset())\n",
                     params={"x": "choice(1, 2)"}, metric="score", goal="max",
                     sampler="grid", trials=2, concurrency=2, namespace={"offset": offset})
    sweep.wait(timeout=300)
    trials = sweep.trials()
    assert sorted(run.metrics()["score"] for run in trials) == [2.0, 3.0]
    keys = s3_keys(s3_ws["endpoint"], prefix)
    assert f"{prefix}/sweeps/{sweep.id}/carried/offset.pkl" in keys
    assert f"{prefix}/sweeps/{sweep.id}/base.ipynb" in keys
    assert not [k for k in keys if "/job/carried/" in k]  # one copy, not one per trial

    # A trial's inputs as another node fetches them: from the sweep's files in S3.
    here = ws.location
    node = Backend(WorkspaceLocation(s3_ws["tmp"] / "other-node", here.database_url,
                                     here.artifact_url, here.artifact_options), ws.config)
    try:
        spec = JobSpec.load(node, trials[0].id)
        assert spec.carried == ["offset"] and spec.carried_sweep == sweep.id
        assert (fetch_inputs(node, spec) / "carried" / "offset.pkl").stat().st_size > 0
    finally:
        node.store.close()


def test_a_model_registered_from_s3_downloads_and_serves(s3_ws) -> None:
    ws, tmp = s3_ws["ws"], s3_ws["tmp"]
    with mlops.start_run("train", experiment="s3") as run:
        (mlops.outputs_dir() / "model").mkdir()
        (mlops.outputs_dir() / "model" / "weights.json").write_text(json.dumps({"w": 2.5}))
    model = run.register_model("scaler", "model")
    assert model.version == 1
    got = ws.models.get("scaler").download(tmp / "model-copy")
    assert json.loads((Path(got) / "weights.json").read_text()) == {"w": 2.5}

    entry = tmp / "score.py"
    entry.write_text(
        "import json\nimport jupyter_mlops as mlops\n"
        "def init():\n    global W\n"
        "    W = json.loads((mlops.model_dir() / 'weights.json').read_text())['w']\n"
        "def run(raw):\n    return {'y': W * json.loads(raw)['x']}\n")
    endpoint = ws.deploy("scaler", entry, name="scaler-s3")
    try:
        assert endpoint.score({"x": 2}) == {"y": 5.0}
    finally:
        endpoint.delete()


@pytest.fixture
def jp_server_config(s3_ws) -> dict[str, Any]:
    """The server is told where the artifacts are by its own configuration, as an operator
    would write it in jupyter_server_config.py."""
    return {"ServerApp": {"jpserver_extensions": {"jupyter_mlops": True}},
            "WorkspaceConfig": {"artifact_url": s3_ws["ws"].location.artifact_url,
                                "artifact_options": {"endpoint_url": s3_ws["endpoint"]}}}


async def test_rest_downloads_an_artifact_kept_in_s3(s3_ws, jp_fetch) -> None:
    with mlops.start_run("rest", experiment="s3") as run:
        (mlops.outputs_dir() / "report.txt").write_text("from S3")
    response = await jp_fetch("mlops", "api", "runs", run.id, "artifacts", "outputs",
                              "report.txt")
    assert response.code == 200 and response.body == b"from S3"
    listing = await jp_fetch("mlops", "api", "runs", run.id, "artifacts")
    assert "outputs/report.txt" in response_paths(json.loads(listing.body))


def response_paths(body: Any) -> list[str]:
    items = body["artifacts"] if isinstance(body, dict) else body
    return [item["path"] for item in items]


def test_a_missing_bucket_is_one_clear_error_naming_the_url(s3_ws, monkeypatch) -> None:
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/ws"
    monkeypatch.setenv("JUPYTER_MLOPS_ARTIFACT_URL", url)
    with pytest.raises(WorkspaceError, match="does not exist") as caught:
        mlops.workspace()
    message = str(caught.value)
    assert url in message and "\n" not in message and "testing-secret" not in message
    result = cli("runs", "ls", env={"JUPYTER_MLOPS_ARTIFACT_URL": url})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], result.stderr
    assert "testing-secret" not in result.stderr

    monkeypatch.setenv("JUPYTER_MLOPS_ARTIFACT_URL", "nosuchfs://bucket/ws")
    with pytest.raises(WorkspaceError, match="nosuchfs://bucket/ws"):
        mlops.workspace()
    monkeypatch.setenv("JUPYTER_MLOPS_ARTIFACT_OPTIONS", "[not json")
    with pytest.raises(WorkspaceError, match="JUPYTER_MLOPS_ARTIFACT_OPTIONS"):
        mlops.workspace()


def test_an_unreachable_endpoint_is_one_clear_error_for_every_operation(s3_ws) -> None:
    from jupyter_mlops.store import ArtifactStore

    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    options = {"endpoint_url": closed, "config_kwargs": {"retries": {"max_attempts": 1}}}
    url = f"s3://{BUCKET}/{s3_ws['prefix']}"
    store = ArtifactStore(url, options)
    for operation in (store.check, lambda: store.open("r1", "outputs/a.txt"),
                      lambda: store.put_bytes("r1", "outputs/a.txt", b"x"),
                      lambda: store.exists("r1", "outputs/a.txt")):
        with pytest.raises(WorkspaceError) as caught:
            operation()
        assert url in str(caught.value) and "\n" not in str(caught.value)
    result = cli("runs", "ls", env={"JUPYTER_MLOPS_ARTIFACT_URL": url,
                                    "JUPYTER_MLOPS_ARTIFACT_OPTIONS": json.dumps(options)})
    assert result.returncode == 2 and "cannot be reached" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_write_that_fails_midway_leaves_no_object(s3_ws) -> None:
    class Broken:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise OSError("the source went away")
            return b"x" * size

    store, prefix = s3_ws["ws"].artifacts, s3_ws["prefix"]
    with pytest.raises(OSError, match="source went away"):
        store.put_stream("r1", "outputs/half.bin", Broken())
    assert s3_keys(s3_ws["endpoint"], f"{prefix}/runs/r1/") == []
    store.put_bytes("r1", "outputs/whole.bin", b"y" * 10)
    assert s3_keys(s3_ws["endpoint"], f"{prefix}/runs/r1/") == [
        f"{prefix}/runs/r1/outputs/whole.bin"]


def test_the_location_travels_whole_to_a_process_started_elsewhere(s3_ws, monkeypatch) -> None:
    """What a job or scoring server gets (``to_env``) opens the same store, without the
    configuration file of the submitter's folder."""
    from jupyter_mlops.store import ArtifactStore, resolve_location

    here = s3_ws["ws"].location
    for name, value in here.to_env().items():
        monkeypatch.setenv(name, value)
    elsewhere = s3_ws["tmp"] / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_location() == here
    assert here.storage_options == {"endpoint_url": s3_ws["endpoint"]}
    ArtifactStore("memory://scratch/ws").check()  # a store without buckets: made on write


def test_a_warm_run_is_forked_with_its_kernel_when_artifacts_are_in_s3(s3_ws, tmp_path,
                                                                       monkeypatch) -> None:
    """The S3 client starts a thread when the workspace opens; the warm job process forks
    its kernel's seed before that, so warm runs on S3 are forked as on a local folder."""
    import re
    import tempfile

    import psutil

    from jupyter_mlops.compute.agent import AgentPaths, ping, request

    from .conftest import wait_until
    from .test_agent import _gone

    runtime = Path(tempfile.mkdtemp(prefix="mlops-rt-"))  # short: a socket path
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JUPYTER_MLOPS_WARM", "1")
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "1")
    ws = s3_ws["ws"]
    paths = AgentPaths.for_workspace(s3_ws["dir"])
    try:
        ws.submit("pass", name="wake-up").wait(timeout=120)
        wait_until(lambda: (a := ping(paths)) is not None and a["ready"].get("") == 1, 120,
                   "a warm process ready")
        run = ws.submit("result = 6 * 7\nprint('answer', result)", name="warm-s3",
                        outputs=["result"])
        run.wait(timeout=120)
        assert run.status == "completed", run.info()["error"]
        assert run.outputs()["result"] == 42
        forked = re.findall(r"^warm job process (\d+) ready in .*, forked, kernel forked\)",
                            paths.log.read_text(), re.M)
        assert str(run.info()["pid"]) in forked, paths.log.read_text()
        assert f"{s3_ws['prefix']}/runs/{run.id}/notebook.ipynb" in s3_keys(
            s3_ws["endpoint"], s3_ws["prefix"])
    finally:
        answer = ping(paths)
        if answer is not None:
            family = [answer["pid"], *(c.pid for c in psutil.Process(answer["pid"]).children(
                recursive=True))]
            request(paths.socket, {"op": "stop"})
            wait_until(lambda: all(_gone(p) for p in family), 60,
                       "the agent and its processes to exit")
        shutil.rmtree(runtime, ignore_errors=True)
