"""How fast does an endpoint serve, and how soon is it ready?

A tiny scikit-learn model (logistic regression on the bundled digits) is served three ways,
in one run, on loopback, and loaded with the same client: 8 concurrent keep-alive
connections (an asyncio HTTP/1.1 client in this process) posting one 64-pixel row as JSON
for ``--seconds`` seconds, after a warm-up.

* jupyter-mlops: ``ws.deploy("digits")`` with the default scikit-learn entry script
  (one worker, ``--cores 1``), key auth on;
* a bare Starlette + uvicorn app doing the same work (parse JSON, ``predict``, answer JSON,
  ``run()`` in the thread pool), one process, no auth — the floor;
* ``mlflow models serve`` on the same model, when MLflow (with its serving extras) is
  installed (``pip install mlflow``).

Also the time from ``ws.deploy`` to ready (and for MLflow, from the command to its first
answer). Targets (issue 11): throughput at least 0.9x the bare app; ready under 2 s.

    python benchmarks/serving.py [--seconds 10] [--connections 8] [--rounds 3]
"""

from __future__ import annotations

import os
import sys

# Measure the checkout this file belongs to, whatever copy is installed.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_here),
               *(p for p in sys.path if os.path.abspath(p or os.curdir) != _here)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

BARE_APP = '''
import json, sys, joblib, anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

model = joblib.load(sys.argv[1])

def run(raw):
    data = json.loads(raw)
    return model.predict(data["data"]).tolist()

async def score(request: Request) -> Response:
    body = (await request.body()).decode()
    json.loads(body)
    result = await anyio.to_thread.run_sync(run, body)
    return Response(json.dumps(result), media_type="application/json")

uvicorn.run(Starlette(routes=[Route("/score", score, methods=["POST"])]),
            host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
'''


async def _client(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                  until: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
               f"{head}\r\n").encode() + body
    while time.perf_counter() < until:
        started = time.perf_counter()
        writer.write(request)
        status_line = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not status_line.startswith(b"HTTP/1.1 200"):
            errors.append(int(status_line.split()[1]))
    writer.close()


def load(url: str, body: bytes, headers: dict[str, str], seconds: float,
         connections: int) -> dict[str, float]:
    parsed = urlparse(url)
    latencies: list[float] = []
    errors: list[int] = []

    async def main(duration: float) -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_client(parsed.hostname, parsed.port, parsed.path or "/score",
                                       body, headers, until, latencies, errors)
                               for _ in range(connections)))

    asyncio.run(main(1.0))  # warm-up
    latencies.clear()
    errors.clear()
    started = time.perf_counter()
    asyncio.run(main(seconds))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"rps": len(latencies) / elapsed, "p50": ordered[len(ordered) // 2],
            "p99": ordered[int(0.99 * (len(ordered) - 1))], "errors": len(errors),
            "requests": len(latencies)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> float:
    """Seconds until ``url`` answers a POST with 200."""
    import urllib.error
    import urllib.request

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def show(name: str, figures: dict[str, float], floor: dict[str, float] | None) -> None:
    ratio = f"  ({figures['rps'] / floor['rps']:.2f}x bare)" if floor else ""
    print(f"   {name:<28} {figures['rps']:8.0f} req/s  p50 {figures['p50'] * 1e3:6.2f} ms  "
          f"p99 {figures['p99'] * 1e3:6.2f} ms  errors {figures['errors']}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--ready-reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import jupyter_mlops as mlops

    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.connections} connections, "
          f"{args.seconds:g} s each")
    images, labels = load_digits(return_X_y=True)
    body = json.dumps({"data": images[:1].tolist()}).encode()
    json_headers = {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model_path = root / "digits.joblib"
        joblib.dump(LogisticRegression(max_iter=300).fit(images, labels), model_path)
        ws = mlops.workspace(root / "ws")
        ws.models.register("digits", model_path)

        ready = []
        for i in range(args.ready_reps):
            started = time.perf_counter()
            endpoint = ws.deploy("digits", name=f"ready-{i}")
            ready.append(time.perf_counter() - started)
            endpoint.delete()
        print(f"\n1. ws.deploy to ready (scikit-learn, default entry), {args.ready_reps} "
              f"deploys: median {statistics.median(ready):.2f} s, max {max(ready):.2f} s "
              f"(target: under 2 s) {'MET' if statistics.median(ready) < 2 else 'MISSED'}")

        print(f"\n2. POST /score, one row, {args.connections} concurrent connections, "
              f"{args.rounds} rounds round-robin (medians)")
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(model_path),
                                 str(bare_port)])
        endpoint = ws.deploy("digits", name="bench")
        try:
            bare_url = f"http://127.0.0.1:{bare_port}/score"
            wait_http(bare_url, body, json_headers)
            auth = {**json_headers, "Authorization": f"Bearer {endpoint.key}"}
            rounds: dict[str, list[dict[str, float]]] = {"bare": [], "ours": []}
            for _ in range(args.rounds):  # alternate, so a noisy moment hits both alike
                rounds["bare"].append(load(bare_url, body, json_headers, args.seconds,
                                           args.connections))
                rounds["ours"].append(load(endpoint.scoring_url, body, auth, args.seconds,
                                           args.connections))
        finally:
            bare.terminate()
            bare.wait()
            endpoint.delete()

        def median(name: str) -> dict[str, float]:
            return {k: statistics.median(r[k] for r in rounds[name]) for k in rounds[name][0]}

        floor, ours = median("bare"), median("ours")
        show("bare Starlette+uvicorn", floor, None)
        show("jupyter-mlops endpoint", ours, floor)
        ratio = ours["rps"] / floor["rps"]
        print(f"   throughput ratio {ratio:.2f}x (target: at least 0.9x) "
              f"{'MET' if ratio >= 0.9 else 'MISSED'}")

        if shutil.which("mlflow") is None:
            print("   MLflow: not installed (pip install mlflow) — not measured")
            return
        try:
            import mlflow.sklearn

            mlflow.sklearn.save_model(joblib.load(model_path), str(root / "mlflow-model"))
        except Exception as exc:  # the skinny package lacks the flavor's extras
            print(f"   MLflow: cannot save the model here ({exc}) — not measured")
            return
        port = free_port()
        started = time.perf_counter()
        server = subprocess.Popen(
            ["mlflow", "models", "serve", "-m", str(root / "mlflow-model"), "-p", str(port),
             "--env-manager", "local"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            payload = json.dumps({"inputs": images[:1].tolist()}).encode()
            url = f"http://127.0.0.1:{port}/invocations"
            try:
                wait_http(url, payload, json_headers, timeout=180)
            except TimeoutError:
                print(f"   MLflow: no answer ({server.stderr.read1(2000).decode()[-300:]})")
                return
            print(f"   MLflow models serve ready in {time.perf_counter() - started:.2f} s")
            show("mlflow models serve", load(url, payload, json_headers, args.seconds,
                                             args.connections), floor)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
