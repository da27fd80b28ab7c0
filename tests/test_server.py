"""The REST server extension against a real jupyter server (pytest-jupyter), a real SQLite
workspace and, for the change feed, a real job: every route, its auth, its error mapping
and the artifact download's confinement."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from tornado.httpclient import HTTPClientError
from tornado.web import _ApplicationRouter

from jupyter_mlops.server import ROUTES
from jupyter_mlops.server._handlers import verbs
from jupyter_mlops.store import _schema as t
from jupyter_mlops.store import new_run_id

pytest_plugins = ("pytest_jupyter.jupyter_server",)

XSS = "<img src=x onerror=alert(1)>"
OPENAPI = Path(__file__).parent.parent / "jupyter_mlops" / "server" / "openapi.yaml"


@pytest.fixture
def jp_server_config(ws_dir: Path) -> dict[str, Any]:
    # The editable install has no etc/jupyter file enabling the extension: enable it here.
    return {"ServerApp": {"jpserver_extensions": {"jupyter_mlops": True}}}


@pytest.fixture
def api(jp_fetch):
    """GET/POST under /mlops/api/ with the token; returns (status, decoded JSON)."""

    async def call(path: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
        try:
            response = await jp_fetch("mlops", "api", *path.split("/"), method=method,
                                      **({"body": b""} if method == "POST" else {}), **kwargs)
        except HTTPClientError as exc:
            response = exc.response
        assert response.headers["Content-Type"].startswith("application/json")
        return response.code, json.loads(response.body)

    return call


@pytest.fixture
def raw(http_server_client, jp_base_url):
    """A request for an exact, unescaped path under the server's base URL."""

    async def call(path: str, method: str = "GET", headers: dict | None = None,
                   body: bytes | None = None):
        try:
            return await http_server_client.fetch(
                jp_base_url + path, method=method, headers=headers or {}, body=body,
                follow_redirects=False, raise_error=False, request_timeout=60)
        except HTTPClientError as exc:
            return exc.response

    return call


def fill_runs(ws, count: int, experiment: str = "bulk") -> list[str]:
    """``count`` completed runs written in bulk through the schema, one per second back."""
    now = time.time()
    ids = [new_run_id() for _ in range(count)]
    with ws.store.write() as conn:
        exp = ws.store.experiment_id(conn, experiment)
        conn.execute(t.runs.insert(), [
            {"id": run_id, "name": f"run-{i}", "experiment_id": exp, "status": "completed",
             "kind": "inline", "params": {"i": i}, "tags": {"parity": str(i % 2)},
             "created_at": now - count + i // 3}  # three runs share each created_at
            for i, run_id in enumerate(ids)])
    return ids


def test_openapi_lists_every_route_and_verb() -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    documented = {path: sorted(k for k in ops if k in ("get", "post", "put", "delete"))
                  for path, ops in spec["paths"].items()}
    served = {"/" + template: sorted(verbs(handler)) for template, handler in ROUTES}
    assert served == documented


def test_package_import_stays_lazy() -> None:
    code = ("import sys, jupyter_mlops\n"
            "points = jupyter_mlops._jupyter_server_extension_points\n"
            "print(sorted(m for m in ('jupyter_server', 'tornado', 'sqlalchemy', "
            "'jupyter_mlops.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(OPENAPI.parents[2])})
    assert out.stdout.strip() == "[]"


def _rules(router: Any) -> list[tuple[str, Any]]:
    found = []
    for rule in router.rules:
        if isinstance(rule.target, _ApplicationRouter) or hasattr(rule.target, "rules"):
            found += _rules(rule.target)
        elif hasattr(rule.matcher, "regex"):
            found.append((rule.matcher.regex.pattern, rule.target))
    return found


async def test_every_route_refuses_unauthenticated_requests(jp_serverapp, raw) -> None:
    rules = [(pattern, target) for pattern, target in _rules(jp_serverapp.web_app.default_router)
             if "mlops/api/" in pattern]
    assert len(rules) == len(ROUTES)  # the walk found every handler the extension added
    for pattern, _target in rules:
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: "x" if m[1] != "path" else "a/b.txt",
                      pattern).rstrip("$").split("mlops/api/", 1)[1]
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = await raw("mlops/api/" + path, method=method,
                                 body=b"" if method in ("POST", "PUT", "PATCH") else None)
            assert response.code == 403, (method, path, response.code)
            assert b"Traceback" not in response.body


async def _login_cookie(raw, jp_serverapp) -> str:
    """A browser's session: the login cookie and an _xsrf cookie (no token on requests)."""
    xsrf = "2|aaaaaaaa|bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb|1700000000"
    token = jp_serverapp.identity_provider.token
    response = await raw("login", method="POST", headers={"Cookie": f"_xsrf={xsrf}"},
                         body=urllib.parse.urlencode({"password": token, "_xsrf": xsrf}).encode())
    assert response.code == 302, response.code
    cookies = [c.split(";")[0] for c in response.headers.get_list("Set-Cookie")]
    return "; ".join([*cookies, f"_xsrf={xsrf}"]), xsrf


async def test_mutating_verbs_need_xsrf(ws, jp_serverapp, raw) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "waiting", "e", status="queued", target="local")
    cookie, xsrf = await _login_cookie(raw, jp_serverapp)
    path = f"mlops/api/runs/{run_id}/cancel"
    host = f"127.0.0.1:{jp_serverapp.web_app.settings.get('port', '')}"
    cross = await raw(path, "POST", body=b"", headers={
        "Cookie": cookie, "Origin": "http://evil.example", "Referer": "http://evil.example/"})
    assert cross.code == 403
    no_token = await raw(path, "POST", body=b"", headers={"Cookie": cookie})
    assert no_token.code == 403
    assert ws.get_run(run_id).status == "queued"  # nothing happened
    read = await raw(f"mlops/api/runs/{run_id}", headers={"Cookie": cookie})
    assert read.code == 200  # the cookie does authenticate
    allowed = await raw(path, "POST", body=b"", headers={"Cookie": cookie, "X-XSRFToken": xsrf})
    assert allowed.code == 202, (allowed.code, allowed.body, host)
    assert json.loads(allowed.body)["status"] == "canceled"


async def test_routes_answer_json(ws, api, tmp_path: Path) -> None:
    import jupyter_mlops as mlops
    from jupyter_mlops.sweeps import SweepSpec

    with mlops.start_run(XSS, experiment="exp", params={"lr": 0.1}, tags={"team": "a"}) as run:
        for step in range(50):
            mlops.log("loss", 1.0 / (step + 1), step=step)
        mlops.log("nan", float("nan"))
        (mlops.outputs_dir() / "model.txt").write_text("weights")
    ws.store.append_logs(run.id, [("stdout", "hello from the run\n", time.time())])
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    ws.datasets.register("pets", str(tmp_path / "data.csv"))
    run.register_model("digits", "model.txt")
    sweep_id = "sw" + new_run_id()
    ws.store.create_sweep(sweep_id, "search", "exp", vars(SweepSpec(
        space={"lr": "uniform(0, 1)"}, metric="loss", goal="minimize")))
    for trial in range(2):
        trial_id = new_run_id()
        ws.store.create_run(trial_id, f"trial-{trial}", "exp", status="completed",
                            sweep_id=sweep_id, trial_number=trial, params={"lr": trial / 2})
        ws.store.log_metrics(trial_id, [("loss", 0, 1.0 - trial / 4, time.time())])
    ws.backend.endpoints.create("ep" + new_run_id(), "api-ep", model_name="digits",
                                model_version=1, entry="def run(d): ...", entry_name="score.py",
                                bind_host="127.0.0.1", key_hash="f" * 64, config={})

    code, body = await api("experiments")
    assert code == 200 and {e["name"] for e in body["experiments"]} >= {"exp"}
    code, body = await api("runs", params={"experiment": "exp", "tag": "team:a", "q": "onerror"})
    assert code == 200 and [r["id"] for r in body["runs"]] == [run.id]
    listed = body["runs"][0]
    assert listed["name"] == XSS  # data, unchanged
    assert listed["metrics"]["loss"] == pytest.approx(1 / 50) and listed["metrics"]["nan"] is None
    code, body = await api("runs", params={"status": "failed"})
    assert code == 200 and body["runs"] == []
    code, body = await api(f"runs/{run.id}")
    assert code == 200 and body["name"] == XSS and body["params"] == {"lr": 0.1}
    assert [a["path"] for a in body["artifacts"]] == ["outputs/model.txt"]
    code, body = await api(f"runs/{run.id}/metrics", params={"keys": "loss", "max_points": "10"})
    assert code == 200 and body["metrics"]["loss"]["points"] == 50
    assert len(body["metrics"]["loss"]["step"]) <= 10 and 1.0 in body["metrics"]["loss"]["value"]
    code, body = await api(f"runs/{run.id}/logs")
    assert code == 200 and "hello from the run" in "".join(c["text"] for c in body["chunks"])
    code, again = await api(f"runs/{run.id}/logs", params={"after": str(body["after"])})
    assert code == 200 and again["chunks"] == []
    code, body = await api(f"runs/{run.id}/artifacts")
    assert code == 200 and body["artifacts"][0]["path"] == "outputs/model.txt"
    code, body = await api("sweeps")
    assert code == 200 and [s["id"] for s in body["sweeps"]] == [sweep_id]
    code, body = await api(f"sweeps/{sweep_id}")
    assert code == 200 and [row["trial"] for row in body["leaderboard"]] == [1, 0]
    code, body = await api("models")
    assert code == 200 and [(m["name"], m["version"]) for m in body["models"]] == [("digits", 1)]
    code, body = await api("models/digits")
    assert code == 200 and len(body["versions"]) == 1
    code, body = await api("models/digits/latest")
    assert code == 200 and body["run_id"] == run.id and body["files"][0]["path"] == "model.txt"
    code, body = await api("datasets")
    assert code == 200 and body["datasets"][0]["name"] == "pets"
    code, body = await api("datasets/pets")
    assert code == 200 and body["versions"][0]["version"] == 1
    code, body = await api("endpoints")
    assert code == 200 and body["endpoints"][0]["name"] == "api-ep"
    assert "f" * 64 not in json.dumps(body) and "key" not in body["endpoints"][0]
    code, body = await api("targets")
    assert code == 200 and body["slots"] and body["queue"] == []
    code, body = await api("events")
    assert code == 200 and re.fullmatch(r"\d+-\d+", body["cursor"])


async def test_errors_are_mapped_without_paths_or_tracebacks(ws, api, ws_dir) -> None:
    for path, params, status in [
        ("runs/nope", {}, 404),
        ("runs/nope/metrics", {}, 404),
        ("models/nope", {}, 404),
        ("models/digits/0", {}, 400),
        ("sweeps/nope", {}, 404),
        ("runs", {"limit": "0"}, 400),
        ("runs", {"status": "sleeping"}, 400),
        ("runs", {"cursor": "!!"}, 400),
        ("runs", {"q": "x" * 500}, 400),
        ("runs", {"tag": "no-colon"}, 400),
        ("events", {"since": "yesterday"}, 400),
        ("runs", {"q": "x" * 150, "experiment": "y" * 150, **{f"t{i}": "z" * 150
                                                             for i in range(30)}}, 413),
    ]:
        code, body = await api(path, params=params)
        assert code == status, (path, params, code, body)
        assert set(body) == {"code", "message"} and body["code"] == status
        assert str(ws_dir) not in body["message"] and "Traceback" not in body["message"]


async def test_an_unusable_workspace_answers_500_generic(ws_dir, api, monkeypatch) -> None:
    ws_dir.mkdir(parents=True)
    (ws_dir / "mlops.db").write_bytes(b"this is not a database, just text" * 100)
    code, body = await api("runs")
    assert code == 500
    assert "workspace" in body["message"] and str(ws_dir) not in body["message"]
    assert "sqlite" not in body["message"].lower() and "select" not in body["message"].lower()


async def test_artifact_download_is_confined_to_the_run(ws, raw, jp_auth_header, tmp_path) -> None:
    import jupyter_mlops as mlops

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    with mlops.start_run("files") as run:
        (mlops.outputs_dir() / "page.html").write_text("<script>alert(1)</script>")
        (mlops.outputs_dir() / "pic.svg").write_text("<svg onload=alert(1)></svg>")
    other = new_run_id()
    ws.store.create_run(other, "other", "e", status="completed")
    ws.artifacts.put_bytes(other, "outputs/theirs.txt", b"other run")
    folder = Path(ws.artifacts.root) / "runs" / run.id / "outputs"
    (folder / "link.txt").symlink_to(secret)
    (folder / "dir").symlink_to(tmp_path)
    for rel in ("outputs/link.txt", "outputs/dir/secret.txt"):
        ws.store.record_artifact(run.id, rel, 10, "0" * 64)  # recorded, yet leading out
    auth = dict(jp_auth_header)
    base = f"mlops/api/runs/{run.id}/artifacts/"
    attacks = [
        "../../../../../../etc/passwd", "outputs/../../" + other + "/outputs/theirs.txt",
        "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f" * 6 + "etc/passwd",
        "..%252f..%252fetc%252fpasswd", "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "%2fetc%2fpasswd", "/etc/passwd", "%2F" + str(secret).lstrip("/"),
        "outputs%5c..%5c..%5csecret.txt", "outputs\\..\\..\\secret.txt",
        "outputs/link.txt", "outputs/dir/secret.txt", "outputs//page.html",
        "./outputs/page.html", "outputs/%00page.html", str(secret),
    ]
    for attack in attacks:
        response = await raw(base + attack, headers=auth)
        assert 400 <= response.code < 500, (attack, response.code)
        assert b"TOP-SECRET" not in response.body and b"root:" not in response.body
        assert b"other run" not in response.body
        assert str(tmp_path).encode() not in response.body
    for name in ("page.html", "pic.svg"):
        response = await raw(base + "outputs/" + name, headers=auth)
        assert response.code == 200 and response.body.startswith(b"<")
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_paging_returns_each_run_once_while_runs_are_created(ws, api) -> None:
    ids = fill_runs(ws, 10_000)
    seen: list[str] = []
    cursor = None
    created = 0
    while True:
        params = {"limit": "1000", "experiment": "bulk"}
        if cursor:
            params["cursor"] = cursor
        code, body = await api("runs", params=params)
        assert code == 200
        seen += [r["id"] for r in body["runs"]]
        ws.store.create_run(new_run_id(), f"new-{created}", "bulk", status="queued")
        created += 1
        cursor = body["cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(ids) <= set(seen)  # every run that existed when paging began, once
    assert created >= 10


async def test_events_follow_every_status_change_of_a_live_run(ws, api) -> None:
    code, start = await api("events")
    cursor = start["cursor"]
    run = ws.submit("import jupyter_mlops as mlops\nfor i in range(3):\n"
                    "    mlops.log('x', float(i))\nprint('done')", name="live")
    statuses: list[str] = []
    metrics: list[dict] = []
    deadline = time.monotonic() + 240
    while "completed" not in statuses and "failed" not in statuses:
        assert time.monotonic() < deadline, f"still waiting; saw {statuses}"
        code, body = await api("events", params={"since": cursor})
        assert code == 200
        for event in body["events"]:
            if event["subject"] == run.id and event["kind"] in ("run.created", "run.status"):
                statuses.append(event["status"])
        metrics += [m for m in body["metrics"] if m["run_id"] == run.id]
        assert run.id not in body["lost"]
        cursor = body["cursor"]
        if not body["events"]:
            import asyncio

            await asyncio.sleep(0.1)
    assert statuses == ["queued", "starting", "running", "completed"], run.logs()
    assert sum(m["points"] for m in metrics) == 3
    code, body = await api("events", params={"since": cursor})
    assert code == 200 and body["events"] == [] and body["cursor"] == cursor


async def test_metrics_downsampled_keep_extremes(ws, api) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "long", "e", status="completed")
    now = time.time()
    points = [("loss", i, float(i % 100), now) for i in range(100_000)]
    points[77_777] = ("loss", 77_777, 1e6, now)
    points[33_333] = ("loss", 33_333, -1e6, now)
    ws.store.log_metrics(run_id, points)
    code, body = await api(f"runs/{run_id}/metrics", params={"max_points": "500"})
    assert code == 200
    series = body["metrics"]["loss"]
    assert series["points"] == 100_000 and len(series["step"]) <= 500
    assert 1e6 in series["value"] and -1e6 in series["value"]
    assert series["step"][0] == 0 and series["step"][-1] == 99_999
    ws.store.log_metrics(run_id, [("loss", 100_000, 5e6, now)])  # read incrementally
    code, body = await api(f"runs/{run_id}/metrics", params={"max_points": "500"})
    assert body["metrics"]["loss"]["points"] == 100_001 and 5e6 in body["metrics"]["loss"]["value"]


async def test_the_server_reads_jupyter_mlops_config_of_its_root_folder(
        ws_dir, api, raw, jp_auth_header, jp_root_dir: Path, tmp_path: Path) -> None:
    """A notebook in the server's root folder and the sidebar must see one workspace: the
    server reads the ``jupyter_mlops_config.py`` there (here: artifacts kept elsewhere)."""
    import jupyter_mlops as mlops
    from jupyter_mlops.store import WorkspaceConfig

    elsewhere = tmp_path / "artifacts-elsewhere"
    (jp_root_dir / "jupyter_mlops_config.py").write_text(
        f"c.WorkspaceConfig.artifact_url = {str(elsewhere)!r}\n")
    notebook_side = mlops.workspace(config=WorkspaceConfig(artifact_url=str(elsewhere)))
    run_id = new_run_id()
    notebook_side.store.create_run(run_id, "kept-elsewhere", "e", status="completed")
    notebook_side.artifacts.put_bytes(run_id, "outputs/model.txt", b"weights")
    assert (elsewhere / "runs" / run_id / "outputs" / "model.txt").is_file()

    notebook_side.store.record_artifact(run_id, "outputs/model.txt", 7, "0" * 64)

    response = await raw(f"mlops/api/runs/{run_id}/artifacts/outputs/model.txt",
                         headers=dict(jp_auth_header))
    assert response.code == 200 and response.body == b"weights"
