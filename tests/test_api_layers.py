"""The one API every surface shares: listings in a constant number of queries, reads that
never write, one reaper, configuration files honoured, thread- and process-safe writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

import jupyter_mlops
import jupyter_mlops as mlops
from jupyter_mlops.errors import NotFound, WorkspaceError
from jupyter_mlops.jobs import reap
from jupyter_mlops.store import new_run_id


@contextmanager
def recorded_statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _writes(statements: list[str]) -> list[str]:
    verbs = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP")
    return [s for s in statements if s.lstrip().upper().startswith(verbs)]


def _add_runs(ws, count: int) -> None:
    for i in range(count):
        run_id = new_run_id()
        ws.store.create_run(run_id, f"run-{i}", "listing", status="completed")
        ws.store.log_metrics(run_id, [("loss", s, 1.0 / (s + 1), time.time()) for s in range(3)]
                             + [("acc", 0, 0.5, time.time())])


def _listing_queries(ws) -> tuple[int, list]:
    with recorded_statements(ws.store.engine) as statements:
        runs = ws.runs(limit=20)
        shown = [(run.snapshot["name"], run.snapshot["status"], run.snapshot["metrics"])
                 for run in runs]
    return len([s for s in statements if s.lstrip().upper().startswith("SELECT")]), shown


def test_a_listing_takes_the_same_queries_for_5_or_60_runs(ws) -> None:
    _add_runs(ws, 5)
    few, shown = _listing_queries(ws)
    assert len(shown) == 5
    assert shown[0][2] == {"loss": pytest.approx(1 / 3), "acc": 0.5}
    _add_runs(ws, 55)
    many, shown = _listing_queries(ws)
    assert len(shown) == 20
    assert all(metrics["loss"] == pytest.approx(1 / 3) for _, _, metrics in shown)
    assert few == many <= 3, f"{few} queries for 5 runs, {many} for 60"


def test_exact_name_is_found_among_60_runs_sharing_its_prefix(ws) -> None:
    ws.store.create_run("feedc0de0001", "train", "names")
    for i in range(60):  # newer, and all of them start with "train"
        ws.store.create_run(new_run_id(), f"train-{i:03d}", "names")
    assert ws.get_run("train").id == "feedc0de0001"
    assert ws.get_run("train-042").name == "train-042"
    assert ws.get_run("feedc0de").id == "feedc0de0001"  # a unique id prefix still works
    with pytest.raises(NotFound, match="matches"):
        ws.get_run("train-0")  # train-000 ... train-009: ambiguous, says so


def test_reads_never_write_and_the_reaper_stores_lost(ws) -> None:
    run_id = new_run_id()
    old = time.time() - 3600
    ws.store.create_run(run_id, "vanished", "reads", status="running", started_at=old,
                        heartbeat_at=old, host="another-host", pid=1)
    with recorded_statements(ws.store.engine) as statements:
        run = ws.get_run(run_id)
        assert run.status == "lost"  # derived: the heartbeat is older than lost_after
        assert "heartbeat" in run.error
        assert [r.snapshot["status"] for r in ws.runs(experiment="reads")] == ["lost"]
        assert [r.id for r in ws.runs(status="lost")] == [run_id]
        assert run.to_dict()["status"] == "lost"
    assert _writes(statements) == []
    assert ws.store.get_run_row(run_id)["status"] == "running"  # nothing stored by reading
    assert reap(ws.backend) == [run_id]
    stored = ws.store.get_run_row(run_id)
    assert stored["status"] == "lost" and stored["ended_at"] is not None
    assert reap(ws.backend) == []  # once


def test_opening_a_workspace_reaps_runs_whose_process_is_gone(ws_dir: Path) -> None:
    from jupyter_mlops.api import _workspace

    ws = mlops.workspace()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_id = new_run_id()
    ws.store.create_run(run_id, "crashed", "reap", status="running", started_at=time.time(),
                        heartbeat_at=time.time(), host=socket.gethostname(), pid=gone.pid)
    assert ws.store.get_run_row(run_id)["status"] == "running"
    ws.store.close()
    _workspace._cache.clear()  # as a new process would
    mlops.workspace()
    assert ws.store.get_run_row(run_id)["status"] == "lost"


def test_two_threads_log_under_their_own_runs(ws) -> None:
    both_inside = threading.Barrier(2)
    seen: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def train(name: str, value: float) -> None:
        try:
            with mlops.start_run(name, experiment="threads") as run:
                both_inside.wait(timeout=60)  # both runs are open at once from here on
                for _ in range(500):
                    mlops.log("x", value)
                seen[name] = (run.id, mlops.current_run().id)
                both_inside.wait(timeout=60)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(f"t{i}", float(i))) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    for name, value in (("t1", 1.0), ("t2", 2.0)):
        run_id, current = seen[name]
        assert current == run_id
        points = ws.store.metric_rows(run_id, "x")
        assert len(points) == 500
        assert {p[3] for p in points} == {value}
        assert ws.get_run(run_id).status == "completed"
    assert mlops.current_run() is None


def test_a_thread_started_inside_a_run_logs_to_it(ws) -> None:
    with mlops.start_run("parent-thread", experiment="threads") as run:
        helper = threading.Thread(target=lambda: mlops.log("from_helper", 1.0))
        helper.start()
        helper.join(timeout=60)
    assert len(ws.store.metric_rows(run.id, "from_helper")) == 1


def test_automatic_steps_stay_unique_across_four_threads(ws) -> None:
    start = threading.Barrier(4)

    def log_many() -> None:
        start.wait(timeout=60)
        for i in range(2_000):
            mlops.log("loss", float(i))

    with mlops.start_run("steps", experiment="threads") as run:
        threads = [threading.Thread(target=log_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    steps = sorted(p[2] for p in ws.store.metric_rows(run.id, "loss"))
    assert steps == list(range(8_000))


def test_configuration_file_values_reach_the_store_and_the_reads(ws_dir: Path) -> None:
    # ws_dir made the test's folder the current directory: Jupyter reads config files there.
    Path("jupyter_server_config.py").write_text(
        "c.WorkspaceConfig.busy_timeout = 7.5\n"
        "c.WorkspaceConfig.lost_after = 120.0\n"
    )
    Path("jupyter_mlops_config.json").write_text(  # read after the server's: it wins
        json.dumps({"WorkspaceConfig": {"heartbeat_interval": 3.0}})
    )
    ws = mlops.workspace()
    assert (ws.config.busy_timeout, ws.config.lost_after, ws.config.heartbeat_interval) == (
        7.5, 120.0, 3.0)
    with ws.store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7500
    # A heartbeat 60 s old is within this lost_after: the run is still running, not lost.
    run_id = new_run_id()
    ws.store.create_run(run_id, "slow-beat", "config", status="running", host="other-host",
                        pid=1, started_at=time.time() - 60, heartbeat_at=time.time() - 60)
    assert ws.get_run(run_id).status == "running"


def test_timings_that_could_call_a_live_job_lost_are_refused(ws_dir: Path) -> None:
    Path("jupyter_mlops_config.py").write_text(
        "c.WorkspaceConfig.busy_timeout = 60.0\nc.WorkspaceConfig.lost_after = 30.0\n"
    )
    with pytest.raises(WorkspaceError, match=r"lost_after \(30 s\) must exceed busy_timeout"):
        mlops.workspace()
    Path("jupyter_mlops_config.py").write_text("c.WorkspaceConfig.lost_after = 'soon'\n")
    with pytest.raises(WorkspaceError, match="bad workspace configuration"):
        mlops.workspace()


MERGER = """
import sys
import jupyter_mlops as mlops

run_id, who = sys.argv[1], sys.argv[2]
store = mlops.workspace().store
for i in range(200):
    store.merge_run_json(run_id, "params", {f"{who}-{i}": i})
"""


def test_merge_run_json_from_two_processes_loses_nothing(ws) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "merged", "merge", params={"kept": True})
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_MLOPS_")}
    env["JUPYTER_MLOPS_WORKSPACE"] = str(ws.location.directory)
    source = str(Path(jupyter_mlops.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    procs = [subprocess.Popen([sys.executable, "-c", MERGER, run_id, who], env=env,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    params = ws.store.get_run_row(run_id)["params"]
    assert len(params) == 401
    assert params["kept"] is True
    assert all(params[f"{who}-{i}"] == i for who in "ab" for i in range(200))
