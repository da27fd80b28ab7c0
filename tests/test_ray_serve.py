"""Endpoints on Ray Serve (``--target ray``) on a real local Ray cluster (tests/_ray_cluster.py):
two replicas both serving, key auth, request figures and logs in the store, delete freeing
the route; an ``init()`` that fails ends the endpoint ``failed`` with nothing left running.
One cluster and one Serve instance for the module (Serve is started by the first deploy).
"""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ._ray_cluster import ray_cluster  # noqa: F401
from .conftest import cli, wait_until
from .test_artifacts_s3 import s3_endpoint, s3_ws  # noqa: F401

# The test extra installs Ray Serve: a missing one is a broken install, not a reason to skip.
if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
    raise ImportError("Ray Serve is not installed: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(400)

ENTRY = """
import json, os
import jupyter_mlops as mlops

WEIGHT = None

def init():
    global WEIGHT
    WEIGHT = float((mlops.model_dir() / "weight.txt").read_text())
    print("init done in", os.getpid())

def run(raw_data):
    return {"pid": os.getpid(), "y": WEIGHT * json.loads(raw_data)["x"]}
"""

FAILING = """
def init():
    raise RuntimeError("no weights here: init() is broken")

def run(raw_data):
    return 0
"""


def _with_model(ws, folder: Path):
    (folder / "weight.txt").write_text("3")
    (folder / "score.py").write_text(ENTRY)
    (folder / "broken.py").write_text(FAILING)
    ws.models.register("scale", folder / "weight.txt")
    return ws


@pytest.fixture
def model_ws(ray_cluster: str, ws, tmp_path: Path):  # noqa: F811
    return _with_model(ws, tmp_path)


@pytest.fixture
def s3_model_ws(ray_cluster: str, s3_ws):  # noqa: F811
    """Artifacts only on S3 (moto's server mode, the only S3-compatible server installable
    here): the replicas can get the model from nowhere but the artifact store."""
    _with_model(s3_ws["ws"], s3_ws["tmp"])
    return s3_ws


def _post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


def _applications() -> dict:
    from ray import serve

    return serve.status().applications


def test_an_endpoint_with_two_replicas_end_to_end(s3_model_ws) -> None:
    from jupyter_mlops.api import ScoringError

    """``%%deploy --target ray --replicas 2``: the cell is the entry script and the name it
    reads from the notebook (``offset``) travels to the replicas with it."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    shell.user_ns["offset"] = 0.5
    try:
        endpoint = shell.run_cell_magic(
            "deploy", "scale --name scale-api --target ray --replicas 2 --cores 0.5",
            ENTRY.replace("WEIGHT * json", "offset + WEIGHT * json"))
    finally:
        shell.user_ns.pop("offset", None)
    assert endpoint.status == "ready"
    assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.url.endswith(endpoint.id)
    info = endpoint.to_dict()
    assert info["config"]["target"] == "ray" and info["config"]["replicas"] == 2
    assert info["config"]["carried"] == ["offset"]
    app = info["config"]["app"]
    deployments = _applications()[app].deployments
    assert deployments["score"].status == "HEALTHY"

    # Both replicas serve: keep scoring until two processes have answered.
    pids: set[int] = set()
    calls = []

    def both_served() -> bool:
        calls.append(1)
        answer = endpoint.score({"x": 2})
        assert answer["y"] == 6.5  # the model's file (fetched by the replica) and offset
        pids.add(answer["pid"])
        return len(pids) == 2

    wait_until(both_served, timeout=120, what="both replicas to answer")
    # No copy of the model beside the workspace: each replica fetched it from S3.
    assert not list((s3_model_ws["dir"] / "endpoints").glob("*/rev-*"))
    sent = 0
    while sent < 10:  # a few more, for the figures
        assert endpoint.score({"x": sent})["y"] == 0.5 + 3.0 * sent
        sent += 1

    # The key is required (Serve's proxy passes the header to the same app as locally).
    status, body = _post(endpoint.scoring_url, {"x": 1}, key=None)
    assert status == 401 and "key" in body["error"]
    status, body = _post(endpoint.scoring_url, {"x": 1}, key="not-the-key")
    assert status == 401
    status, body = _post(endpoint.scoring_url, {"x": 1}, key=endpoint.key)
    assert status == 200 and body["y"] == 3.5

    # Each replica's init() output and its request figures reach the store.
    wait_until(lambda: endpoint.logs().count("init done in") >= 2, timeout=60,
               what="both replicas' init() output in the endpoint's log")
    sent += len(calls) + 3  # and the three sent without the client
    stats = wait_until(lambda: endpoint.stats.get("requests") == sent
                       and endpoint.stats.get("errors") == 2 and endpoint.stats,
                       timeout=60, what=f"{sent} requests, 2 of them refused, in the store")
    assert stats["p99"] >= stats["p50"] > 0
    assert len(stats["replicas"]) == 2
    widget = endpoint.widget(start=False)  # the widget reads the same row and log
    text = widget.static_text()
    assert text.startswith("endpoint scale-api ready") and endpoint.scoring_url in text
    assert f"{sent} requests, 2 errors" in text and "init done in" in widget.log_tail

    endpoint.delete()
    assert endpoint.status == "stopped"
    assert app not in _applications()
    with pytest.raises(ScoringError) as refused:
        endpoint.score({"x": 1})
    assert refused.value.status in (0, 404)  # the proxy no longer routes it


def test_cli_deploy_with_autoscaling_bounds_outlives_the_deploying_process(model_ws) -> None:
    """``jupyter mlops deploy --target ray --min-replicas 1 --max-replicas 2``: Serve gets the
    bounds, the endpoint serves after the CLI has exited, and the CLI deletes it."""
    from ray.serve.context import _get_global_client

    out = cli("deploy", "scale", "--entry", "score.py", "--name", "auto", "--target", "ray",
              "--min-replicas", "1", "--max-replicas", "2", "--cores", "0.5", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    shown = json.loads(out.stdout)
    assert shown["status"] == "ready" and shown["key"]
    endpoint = model_ws.get_endpoint("auto")
    assert endpoint.score({"x": 4})["y"] == 12.0
    details = _get_global_client().get_serve_details()
    config = details["applications"][shown["config"]["app"]]["deployments"]["score"][
        "deployment_config"]["autoscaling_config"]
    assert (config["min_replicas"], config["max_replicas"]) == (1, 2)

    gone = cli("endpoints", "delete", "auto")
    assert gone.returncode == 0 and "stopped" in gone.stdout, gone.stdout + gone.stderr
    assert shown["config"]["app"] not in _applications()


def test_a_failing_init_ends_failed_with_the_reason_and_nothing_running(model_ws) -> None:
    """Through the CLI, with autoscaling bounds: Serve accepts them, the replica's init()
    raises, the endpoint is ``failed`` with the reason, and its application is gone."""
    out = cli("deploy", "scale", "--entry", "broken.py", "--name", "broken", "--target", "ray",
              "--min-replicas", "1", "--max-replicas", "2")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no weights here" in out.stderr, out.stderr
    [endpoint] = model_ws.endpoints(all=True)
    assert endpoint.status == "failed"
    assert "init() is broken" in endpoint.error
    assert endpoint.to_dict()["config"]["autoscaling"] == {
        "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1}
    assert f"mlops-{endpoint.id}" not in _applications()
    assert "Traceback" in endpoint.logs()


def test_bad_ray_deploy_flags_are_refused_before_anything_starts(ws, tmp_path) -> None:
    """No cluster needed: the flags are checked first."""
    import jupyter_mlops as mlops

    (tmp_path / "weight.txt").write_text("1")
    (tmp_path / "score.py").write_text(ENTRY)
    ws.models.register("scale", tmp_path / "weight.txt")
    cases = [
        ({"min_replicas": 1, "max_replicas": 2}, "need --target ray"),
        ({"target": "ray", "min_replicas": 3, "max_replicas": 2}, "min <= max"),
        ({"target": "ray", "replicas": 4, "max_replicas": 2}, "must lie within"),
        ({"target": "ray", "port": 8123}, "do not apply to --target ray"),
        ({"target": "ray", "min_replicas": 0}, "from 1 to 64"),
        ({"target": "kubernetes"}, "endpoints run on 'local'"),
    ]
    for options, message in cases:
        with pytest.raises(mlops.InvalidInput, match=message):
            ws.deploy("scale", "score.py", **options)
    assert ws.endpoints(all=True) == []
    out = cli("deploy", "scale", "--entry", "score.py", "--max-replicas", "2")
    assert out.returncode == 2 and "need --target ray" in out.stderr, out.stderr
