"""Serving against a real server on loopback: the seeds' digits flow, key auth, every bad
request, a crash in run() followed by a good request, a version swap under load with zero
failed requests, kill -9 of the server, and the registry refusing to delete a served version.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

import jupyter_mlops as mlops
from jupyter_mlops.api import ScoringError
from jupyter_mlops.errors import Conflict, InvalidInput
from jupyter_mlops.serving import EndpointFailed

from .conftest import wait_until

ENTRY = '''
import base64, json, os, time
import joblib, numpy as np
import jupyter_mlops as mlops

model = None
VERSION = json.loads(os.environ["MLOPS_MODEL_INFO"])["version"]

def init():
    global model
    model = joblib.load(mlops.model_dir() / "model.joblib")
    print("init done: model loaded")

def run(raw_data):
    data = json.loads(raw_data)
    if data.get("crash"):
        raise RuntimeError("boom: a bug in run()")
    if data.get("sleep"):
        time.sleep(data["sleep"])
    if data.get("nan"):
        return {"score": float("nan")}
    if data.get("object"):
        return object()
    pixels = np.frombuffer(base64.b64decode(data["image"]), dtype=np.uint8).reshape(1, 64)
    return {"digit": int(model.predict(pixels)[0]), "version": VERSION}
'''


def _digits_model(folder: Path) -> tuple[Path, np.ndarray, np.ndarray, object]:
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(images, labels)
    path = folder / "model.joblib"
    joblib.dump(model, path)
    return path, images, labels, model


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One workspace with a digits model and an endpoint serving it (shared by the tests
    that only send requests: deploying costs a few seconds)."""
    from jupyter_mlops.api import _workspace

    folder = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_MLOPS_WORKSPACE", str(folder / "ws"))
        patch.chdir(folder)
        (folder / "jupyter_mlops_config.py").write_text(
            "c.Serving.request_timeout = 2.0\nc.Serving.max_body_bytes = 100_000\n")
        model_path, images, labels, model = _digits_model(folder)
        (folder / "score.py").write_text(ENTRY)
        ws = mlops.workspace()
        ws.models.register("digits", model_path)
        endpoint = ws.deploy("digits", "score.py", name="digits-api")
        try:
            yield {"ws": ws, "endpoint": endpoint, "images": images, "labels": labels,
                   "folder": folder, "predicted": model.predict(images[:20]).tolist()}
        finally:
            endpoint.delete()
            for opened in list(_workspace._cache.values()):
                opened.store.close()
            _workspace._cache.clear()


def _image(images: np.ndarray, i: int) -> str:
    return base64.b64encode(images[i].astype(np.uint8).tobytes()).decode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """One request on a fresh connection; returns (status, decoded JSON body)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.request("POST", "/score", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _auth(endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.key}", "Content-Type": "application/json"}


def test_the_seeds_flow_a_base64_image_in_the_predicted_digit_out(served) -> None:
    endpoint, images, labels = served["endpoint"], served["images"], served["labels"]
    assert endpoint.status == "ready"
    assert endpoint.url.startswith("http://127.0.0.1:")
    right = 0
    for i in range(20):
        answer = endpoint.score({"image": _image(images, i)})
        assert answer["version"] == 1
        right += answer["digit"] == labels[i]
    assert right >= 18  # the model is good: the digit really came from it
    wait_until(lambda: "init done: model loaded" in endpoint.logs(), timeout=30,
               what="init()'s output in the endpoint's log")
    stats = wait_until(lambda: endpoint.stats["requests"] >= 20 and endpoint.stats,
                       timeout=30, what="the request figures to reach the store")
    assert stats["p50"] is not None and stats["p99"] >= stats["p50"]


def test_requests_without_the_right_key_get_401(served) -> None:
    endpoint = served["endpoint"]
    body = json.dumps({"image": _image(served["images"], 0)}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": endpoint.key}):
        status, answer = _post(endpoint.url, body, {"Content-Type": "application/json",
                                                    **headers})
        assert status == 401, headers
        assert "Bearer" in answer["error"]
    assert endpoint.to_dict()["auth"] is True
    assert endpoint.key not in json.dumps(endpoint.to_dict())


def test_health_and_readiness(served) -> None:
    url = urlparse(served["endpoint"].url)
    for path in ("/healthz", "/readyz"):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", path)
        assert conn.getresponse().status == 200
        conn.close()


@pytest.mark.parametrize("body, headers, status, message", [
    (b"{not json", {}, 400, "malformed JSON"),
    (b"<xml/>", {"Content-Type": "application/xml"}, 400, "content type"),
    (b"\xff\xfe", {"Content-Type": "text/plain"}, 400, "UTF-8"),
    (b"x" * 200_000, {}, 413, "over the limit"),
    (json.dumps({"crash": True}).encode(), {}, 500, "run() raised RuntimeError"),
    (json.dumps({"nan": True}).encode(), {}, 500, "NaN or infinity"),
    (json.dumps({"object": True}).encode(), {}, 500, "JSON cannot hold"),
    (json.dumps({"sleep": 5}).encode(), {}, 504, "did not answer within 2 s"),
])
def test_a_bad_request_gets_its_status_and_the_server_keeps_serving(
        served, body: bytes, headers: dict, status: int, message: str) -> None:
    endpoint = served["endpoint"]
    got, answer = _post(endpoint.url, body, {**_auth(endpoint), **headers})
    assert got == status, answer
    assert message in answer["error"]
    if status >= 500:
        assert len(answer["request_id"]) == 12
        assert "Traceback" not in answer["error"]
    # and a good request right after it succeeds
    good = endpoint.score({"image": _image(served["images"], 3)})
    assert good["digit"] == served["predicted"][3]


def test_a_huge_body_without_a_length_is_refused_before_it_is_read_whole(served) -> None:
    endpoint = served["endpoint"]
    url = urlparse(endpoint.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    chunks = (b"x" * 65536 for _ in range(10_000))  # 655 MB if it were all read
    conn.request("POST", "/score", body=chunks, headers=_auth(endpoint),
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_run_raising_logs_the_traceback_only_in_the_endpoint_log(served) -> None:
    endpoint = served["endpoint"]
    with pytest.raises(ScoringError, match=r"500.*RuntimeError"):
        endpoint.score({"crash": True})
    wait_until(lambda: "boom: a bug in run()" in endpoint.logs(), timeout=30,
               what="the traceback in the endpoint's log")
    assert "Traceback (most recent call last)" in endpoint.logs()


def test_a_slow_request_does_not_block_the_others(served) -> None:
    endpoint = served["endpoint"]
    slow: list[int] = []
    thread = threading.Thread(target=lambda: slow.append(
        _post(endpoint.url, json.dumps({"sleep": 5}).encode(), _auth(endpoint))[0]))
    thread.start()
    fast = [endpoint.score({"image": _image(served["images"], i)})["digit"] for i in range(5)]
    thread.join(timeout=60)
    assert slow == [504]
    assert fast == served["predicted"][:5]


def test_a_version_swap_under_load_fails_no_request(served) -> None:
    ws, endpoint, images = served["ws"], served["endpoint"], served["images"]
    ws.models.register("digits", served["folder"] / "model.joblib")  # version 2
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def client() -> None:
        body = json.dumps({"image": _image(images, 7)}).encode()
        while not stop.is_set():
            answers.append(_post(endpoint.url, body, _auth(endpoint)))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    wait_until(lambda: len(answers) >= 10, timeout=60, what="traffic before the swap")
    swapped = ws.deploy("digits:2", "score.py", name="digits-api")
    assert swapped.id == endpoint.id and swapped.url == endpoint.url  # same endpoint, URL
    wait_until(lambda: any(a[1].get("version") == 2 for a in answers[-5:]), timeout=60,
               what="answers from version 2")
    count = len(answers)
    wait_until(lambda: len(answers) >= count + 10, timeout=60, what="traffic after the swap")
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    failed = [a for a in answers if a[0] != 200]
    assert failed == [], failed[:3]
    versions = [a[1]["version"] for a in answers]
    assert versions[0] == 1 and versions[-1] == 2
    assert endpoint.model == "digits:2"
    wait_until(lambda: "now serving revision 2" in endpoint.logs(), timeout=90,
               what="the old workers to drain and the swap to be logged")


def test_deleting_a_served_version_is_refused(served) -> None:
    ws, endpoint = served["ws"], served["endpoint"]
    served_version = int(endpoint.model.split(":")[1])
    with pytest.raises(Conflict, match="served by endpoint digits-api"):
        ws.models.delete("digits", served_version)
    assert ws.models.get("digits", served_version).version == served_version


def test_the_widget_shows_status_url_figures_and_log(served) -> None:
    endpoint = served["endpoint"]
    widget = endpoint.widget(start=False)
    bundle = widget._repr_mimebundle_()
    page = bundle["text/html"]
    for text in ("digits-api", "ready", endpoint.url + "/score", "requests", "latency p99",
                 "init done"):
        assert text in page, text
    assert "digits-api ready" in bundle["text/plain"]
    widget.close()


# -- endpoints of their own ------------------------------------------------------------------


@pytest.fixture
def digits(ws, tmp_path: Path) -> Path:
    path, _, _, _ = _digits_model(tmp_path)
    ws.models.register("digits", path)
    return path


def test_kill_9_of_the_server_reads_lost_and_frees_the_port(ws, digits) -> None:
    endpoint = ws.deploy("digits")  # the default scikit-learn entry script
    images = np.zeros((2, 64)).tolist()
    assert len(endpoint.score({"data": images})) == 2
    row = ws.backend.endpoints.get(endpoint.id)
    os.kill(row["pid"], signal.SIGKILL)
    wait_until(lambda: endpoint.status in ("lost", "failed"), timeout=30,
               what="the endpoint to read lost")
    port = urlparse(endpoint.url).port
    def port_free() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) != 0
    wait_until(port_free, timeout=30, what="the workers to die with their server")
    endpoint.delete()
    assert endpoint.status == "stopped"


def test_init_raising_ends_the_deployment_failed_without_restarts(ws, digits, tmp_path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("def init():\n    raise ValueError('no such weights file')\n\n"
                      "def run(raw_data):\n    return 1\n")
    with pytest.raises(EndpointFailed, match="no such weights file"):
        ws.deploy("digits", script, name="broken")
    endpoint = ws.get_endpoint("broken")
    assert endpoint.status == "failed"
    assert "ValueError: no such weights file" in endpoint.error
    pid = ws.backend.endpoints.get(endpoint.id)["pid"]
    from jupyter_mlops._processes import process_gone

    wait_until(lambda: process_gone(pid), timeout=30, what="the failed server to exit")
    assert ws.endpoints() == []  # nothing restarts it


def test_delete_stops_the_server_frees_the_port_and_unblocks_the_registry(ws, digits) -> None:
    endpoint = ws.deploy("digits", name="short-lived", auth=False)
    assert endpoint.key is None
    assert len(endpoint.score({"data": np.zeros((1, 64)).tolist()})) == 1
    port = urlparse(endpoint.url).port
    endpoint.delete()
    assert endpoint.status == "stopped"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    ws.models.delete("digits", 1)  # no longer served


@pytest.mark.parametrize("kwargs, message", [
    ({"host": "0.0.0.0", "auth": False}, "without a key"),
    ({"memory": "lots"}, "--memory takes a size"),
    ({"cores": 0}, "--cores takes a positive number"),
    ({"replicas": 0}, "--replicas takes a whole number"),
    ({"port": 70000}, "--port takes a port number"),
])
def test_bad_deployments_are_refused_before_anything_starts(ws, digits, kwargs, message
                                                            ) -> None:
    with pytest.raises(InvalidInput, match=message):
        ws.deploy("digits", **kwargs)
    assert ws.endpoints(all=True) == []


def test_an_entry_script_without_run_is_refused(ws, digits, tmp_path) -> None:
    script = tmp_path / "norun.py"
    script.write_text("def init():\n    pass\n")
    with pytest.raises(InvalidInput, match=r"defines no run\(raw_data\)"):
        ws.deploy("digits", script)
    with pytest.raises(InvalidInput, match="no such file"):
        ws.deploy("digits", tmp_path / "missing.py")
    assert ws.endpoints(all=True) == []


# -- the surfaces: CLI and magics ---------------------------------------------------------------


def test_cli_deploy_and_endpoints_verbs(ws, digits, tmp_path) -> None:
    from .conftest import cli

    (tmp_path / "score.py").write_text(ENTRY)
    done = cli("deploy", "digits", "--entry", str(tmp_path / "score.py"), "--name", "cli-ep",
               "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["status"] == "ready" and shown["key"] and shown["model"] == "digits:1"
    images = __import__("sklearn.datasets", fromlist=["load_digits"]).load_digits().data
    status, answer = _post(shown["url"], json.dumps({"image": _image(images, 5)}).encode(),
                           {"Authorization": f"Bearer {shown['key']}",
                            "Content-Type": "application/json"})
    assert status == 200 and answer["version"] == 1
    listed = json.loads(cli("endpoints", "ls", "--json").stdout)
    assert [e["name"] for e in listed] == ["cli-ep"] and "key" not in listed[0]
    assert "ready" in cli("endpoints", "show", "cli-ep").stdout
    wait_until(lambda: "init done: model loaded" in cli("endpoints", "logs", "cli-ep").stdout,
               timeout=60, what="init()'s output in `endpoints logs`")
    refused = cli("deploy", "digits", "--host", "0.0.0.0", "--no-auth")
    assert refused.returncode == 2 and "without a key" in refused.stderr
    assert cli("endpoints", "delete", "cli-ep").returncode == 0
    assert ws.get_endpoint("cli-ep").status == "stopped"
    missing = cli("endpoints", "show", "nothing-here")
    assert missing.returncode == 2 and "no endpoint matches" in missing.stderr


def test_deploy_magics_carry_notebook_names_and_return_the_endpoint(ws, digits) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    shell.user_ns["label_names"] = {i: f"digit-{i}" for i in range(10)}
    shell.run_cell("def as_rows(raw):\n    import json\n    return json.loads(raw)['data']")
    cell = ("import joblib\nimport jupyter_mlops as mlops\n\n"
            "def init():\n    global model\n"
            "    model = joblib.load(mlops.model_dir() / 'model.joblib')\n\n"
            "def run(raw_data):\n"
            "    return [label_names[int(d)] for d in model.predict(as_rows(raw_data))]\n")
    endpoint = shell.run_cell_magic("deploy", "digits --name magic-ep", cell)
    try:
        assert shell.user_ns["_endpoint"] is endpoint
        assert endpoint.status == "ready"
        images = np.zeros((2, 64)).tolist()
        answer = endpoint.score({"data": images})
        assert len(answer) == 2 and all(a.startswith("digit-") for a in answer)
        carried = ws.backend.endpoints.get(endpoint.id)["config"]["carried"]
        assert carried == ["as_rows", "label_names"]
        listing = shell.run_line_magic("mlops", "endpoints")
        assert "magic-ep" in listing.data and "ready" in listing.data
        with pytest.raises(UsageError, match="--replicas takes a whole number"):
            shell.run_line_magic("deploy", "digits --replicas 0")
        with pytest.raises(UsageError, match="no model named 'nope'"):
            shell.run_line_magic("deploy", "nope")
    finally:
        endpoint.delete()
    assert endpoint.status == "stopped"


def test_memory_limit_is_enforced_on_the_workers(ws, digits, tmp_path) -> None:
    script = tmp_path / "hungry.py"
    script.write_text("def init():\n    global block\n    block = bytearray(3 * 2**30)\n\n"
                      "def run(raw_data):\n    return len(block)\n")
    with pytest.raises(EndpointFailed, match="MemoryError"):
        ws.deploy("digits", script, name="hungry", memory="1G")
    assert ws.get_endpoint("hungry").to_dict()["config"]["memory"] == 2**30
