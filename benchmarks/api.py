"""Do listings and widget polls stay fast as a workspace grows?

Two targets of the layering issue, measured on a real SQLite workspace in a temporary folder:

1. ``ws.runs(limit=20)`` (the newest 20 runs with their latest metrics, what ``runs ls`` and
   the runs table show) in a workspace of 10 runs, 1,000 runs and 10,000 runs, each run
   holding four metric keys. Target: 10,000 runs take at most 2x the time of 10 runs.
2. ``RunFeed.poll()`` (one update of the run widget) on a run holding 1,000,000 points,
   while 10 new points arrive between polls, as during training. Target: p95 under 5 ms.

3. The REST API of the server extension, against a real ``jupyter server`` started for the
   purpose, timed by its ``Server-Timing`` header (the server's own time for a request, from
   authentication to the encoded answer) and by the client's round trip. Targets: the newest
   50 of 10,000 runs with filters under 50 ms; a 1,000,000-point series downsampled to at
   most 2,000 points under 100 ms (the first read of a series fills the server's cache from
   the database and is reported apart: about a second per million points); ``events`` with
   nothing new under 5 ms.

Peer, when installed (``pip install mlflow-skinny``): MLflow on a SQLite tracking URI in the
same run, ``MlflowClient.search_runs(max_results=20)`` for (1) at the two smaller sizes (its
client creates runs one by one, so 10,000 would take minutes), and for (2) what an MLflow
view re-reads each refresh, ``get_metric_history`` of one key, on a run of 100,000 points.

    python benchmarks/api.py [--reps 30] [--points 1000000] [--no-peer] [--only-rest]
"""

from __future__ import annotations

import os
import sys

# Measure the checkout this file belongs to, whatever copy is installed.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [
    os.path.dirname(_here),
    *(p for p in sys.path if os.path.abspath(p or os.curdir) not in (_here,)),
]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import sqlalchemy as sa  # noqa: E402

KEYS = ("loss", "accuracy", "lr", "epoch_time")
SIZES = (10, 1_000, 10_000)
PEER_SIZES = (10, 1_000)


def timings(call: Callable[[], object], reps: int) -> list[float]:
    """Seconds per call, after one warm-up call."""
    call()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def fill_workspace(folder: Path, count: int, tags: bool = False):
    """A workspace of ``count`` completed runs, 3 points of each key per run, written in
    bulk through the schema (creating 10,000 runs one transaction each is not the point)."""
    import jupyter_mlops as mlops
    from jupyter_mlops.store import _schema as t
    from jupyter_mlops.store import new_run_id

    ws = mlops.workspace(folder)
    now = time.time()
    with ws.store.write() as conn:
        experiment = ws.store.experiment_id(conn, "bench")
        runs, points = [], []
        for i in range(count):
            run_id = new_run_id()
            runs.append({"id": run_id, "name": f"run-{i}", "experiment_id": experiment,
                         "status": "completed", "kind": "inline", "params": {"lr": 0.01},
                         "tags": {"parity": str(i % 2)} if tags else {},
                         "created_at": now - count + i, "started_at": now,
                         "ended_at": now})
            points += [{"run_id": run_id, "key": key, "step": step, "value": step * 0.1,
                        "wall_time": now} for key in KEYS for step in range(3)]
        conn.execute(t.runs.insert(), runs)
        conn.execute(t.metrics.insert(), points)
    return ws


def bench_listing(reps: int) -> dict[int, list[float]]:
    results = {}
    for count in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            ws = fill_workspace(Path(folder) / "ws", count)
            runs = ws.runs(limit=20)
            assert len(runs) == min(20, count) and set(runs[0].snapshot["metrics"]) == set(KEYS)
            results[count] = timings(lambda ws=ws: ws.runs(limit=20), reps)
            ws.store.close()
    return results


def bench_poll(points: int, reps: int) -> list[float]:
    import jupyter_mlops as mlops
    from jupyter_mlops.store import new_run_id
    from jupyter_mlops.widgets._feed import RunFeed

    with tempfile.TemporaryDirectory() as folder:
        ws = mlops.workspace(Path(folder) / "ws")
        run_id = new_run_id()
        ws.store.create_run(run_id, "big", "bench", status="running",
                            started_at=time.time(), heartbeat_at=time.time())
        now = time.time()
        for start in range(0, points, 100_000):
            ws.store.log_metrics(run_id, [
                (KEYS[i % 4], i // 4, i * 1e-6, now)
                for i in range(start, min(points, start + 100_000))])
        feed = RunFeed(ws.backend, run_id)
        feed.poll()  # a widget opened late reads the history once; then polls are incremental
        assert sum(feed.counts().values()) == points
        step = [points // 4]

        def poll_with_new_points() -> None:
            ws.store.log_metrics(run_id, [(KEYS[i % 4], step[0], 0.5, time.time())
                                          for i in range(10)])
            step[0] += 1
            start = time.perf_counter()
            feed.poll()
            poll_times.append(time.perf_counter() - start)

        poll_times: list[float] = []
        for _ in range(reps + 1):
            poll_with_new_points()
        ws.store.close()
        return poll_times[1:]


def bench_rest(points: int, reps: int) -> dict[str, dict[str, list[float]]]:
    """Server time (Server-Timing) and round trip of REST calls on a real jupyter server."""
    import json
    import secrets
    import signal
    import socket
    import subprocess
    import urllib.request

    from jupyter_mlops.store import new_run_id

    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        ws = fill_workspace(Path(folder) / "ws", 10_000, tags=True)
        run_id = new_run_id()
        ws.store.create_run(run_id, "big", "bench", status="completed")
        now = time.time()
        for start in range(0, points, 100_000):
            ws.store.log_metrics(run_id, [("loss", i, (i * 7919 % 1000) * 1e-3, now)
                                          for i in range(start, min(points, start + 100_000))])
        ws.store.close()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        token = secrets.token_hex(16)
        env = {**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(Path(folder) / "ws"),
               "PYTHONPATH": os.path.dirname(_here)}
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             "--ServerApp.jpserver_extensions={'jupyter_mlops': True}",
             f"--ServerApp.root_dir={folder}", "--allow-root"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        base = f"http://127.0.0.1:{port}/mlops/api/"

        def get(path: str) -> tuple[float, float, dict]:
            request = urllib.request.Request(base + path,
                                             headers={"Authorization": f"token {token}"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
                timing = response.headers["Server-Timing"]
            trip = time.perf_counter() - start
            return float(timing.split("dur=")[1]) / 1e3, trip, body

        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    get("experiments")
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the jupyter server did not start") from None
                    time.sleep(0.2)

            def measure(name: str, path: str, check: Callable[[dict], bool]) -> None:
                server_times, trips = [], []
                for _ in range(reps):
                    spent, trip, body = get(path)
                    assert check(body), (name, str(body)[:300])
                    server_times.append(spent)
                    trips.append(trip)
                results[name] = {"server": server_times, "trip": trips}

            measure("runs: newest 50 of 10,000, experiment+status+tag",
                    "runs?limit=50&experiment=bench&status=completed&tag=parity:1",
                    lambda b: len(b["runs"]) == 50)
            measure("runs: newest 50 of 10,000, text search q",
                    "runs?limit=50&experiment=bench&q=run-9", lambda b: len(b["runs"]) == 50)
            metrics = f"runs/{run_id}/metrics?keys=loss&max_points=2000"
            cold, trip, body = get(metrics)
            assert body["metrics"]["loss"]["points"] == points
            results[f"metrics: first read of {points:,} points (fills the cache)"] = {
                "server": [cold], "trip": [trip]}
            measure(f"metrics: {points:,} points to <= 2,000", metrics,
                    lambda b: len(b["metrics"]["loss"]["step"]) <= 2000)
            cursor = get("events")[2]["cursor"]
            measure("events: nothing new", f"events?since={cursor}",
                    lambda b: b["events"] == [] and b["metrics"] == [])
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    return results


REST_TARGETS = {"runs": 0.050, "metrics: 1": 0.100, "events": 0.005}


def peer_listing(reps: int) -> dict[int, list[float]]:
    from mlflow.tracking import MlflowClient

    results = {}
    for count in PEER_SIZES:
        with tempfile.TemporaryDirectory() as folder:
            client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
            experiment = client.create_experiment("bench")
            for i in range(count):
                run = client.create_run(experiment, run_name=f"run-{i}")
                client.log_batch(run.info.run_id, metrics=[
                    __import__("mlflow").entities.Metric(key, step * 0.1, 0, step)
                    for key in KEYS for step in range(3)])
                client.set_terminated(run.info.run_id)
            found = client.search_runs([experiment], max_results=20)
            assert len(found) == min(20, count)
            results[count] = timings(
                lambda c=client, e=experiment: c.search_runs([e], max_results=20), reps)
    return results


def peer_poll(reps: int, points: int = 100_000) -> list[float]:
    import mlflow
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
        run = client.create_run(client.create_experiment("bench"))
        for start in range(0, points, 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(run.info.run_id, metrics=[
                mlflow.entities.Metric("loss", i * 1e-6, 0, i)
                for i in range(start, min(points, start + 1000))])
        return timings(lambda: client.get_metric_history(run.info.run_id, "loss"), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--only-rest", action="store_true", help="only part 3")
    args = parser.parse_args()
    peer = not args.no_peer and importlib.util.find_spec("mlflow") is not None
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}")

    if not args.only_rest:
        bench_library(args, peer)
    print(f"\n3. REST (jupyter server extension), {args.reps} calls each: server time "
          "(Server-Timing) and round trip, median and p95")
    for name, values in bench_rest(args.points, args.reps).items():
        server, trip = values["server"], values["trip"]
        target = next((v for k, v in REST_TARGETS.items() if name.startswith(k)
                       and "first read" not in name), None)
        verdict = "" if target is None else (
            f"  (target: under {target * 1e3:g} ms) "
            f"{'MET' if statistics.median(server) < target else 'MISSED'}")
        print(f"   {name}: server {statistics.median(server) * 1e3:.2f} ms "
              f"p95 {p95(server) * 1e3:.2f} ms, round trip {statistics.median(trip) * 1e3:.2f} ms"
              f"{verdict}")


def bench_library(args: argparse.Namespace, peer: bool) -> None:
    print(f"\n1. ws.runs(limit=20), median and p95 of {args.reps} calls")
    ours = bench_listing(args.reps)
    for count, values in ours.items():
        print(f"   jupyter-mlops {count:>6,} runs: {statistics.median(values) * 1e3:7.2f} ms"
              f"  p95 {p95(values) * 1e3:7.2f} ms")
    ratio = statistics.median(ours[SIZES[-1]]) / statistics.median(ours[SIZES[0]])
    print(f"   10,000 runs / 10 runs: {ratio:.2f}x  (target: at most 2x) "
          f"{'MET' if ratio <= 2 else 'MISSED'}")
    if peer:
        theirs = peer_listing(args.reps)
        for count, values in theirs.items():
            print(f"   MLflow search_runs {count:>6,} runs: "
                  f"{statistics.median(values) * 1e3:7.2f} ms  p95 {p95(values) * 1e3:7.2f} ms"
                  f"  ({statistics.median(values) / statistics.median(ours[count]):.1f}x ours)")

    print(f"\n2. RunFeed.poll() on a run of {args.points:,} points, 10 new points per poll, "
          f"{args.reps * 10} polls")
    polls = bench_poll(args.points, args.reps * 10)
    print(f"   median {statistics.median(polls) * 1e3:.2f} ms  p95 {p95(polls) * 1e3:.2f} ms  "
          f"max {max(polls) * 1e3:.2f} ms  (target: p95 under 5 ms) "
          f"{'MET' if p95(polls) < 0.005 else 'MISSED'}")
    if peer:
        history = peer_poll(max(3, args.reps // 5))
        print(f"   MLflow get_metric_history of one key, 100,000 points (a re-read per "
              f"refresh): median {statistics.median(history) * 1e3:.1f} ms "
              f"({statistics.median(history) / statistics.median(polls):.0f}x our poll on "
              f"{args.points:,})")


if __name__ == "__main__":
    main()
