"""Hardening: no point acknowledged by ``log()`` is lost while a run says ``completed``, and a
damaged, read-only or full workspace reaches the user as one typed line, untouched."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jupyter_mlops as mlops
import jupyter_mlops.tracking as tracking
from jupyter_mlops.errors import (
    InvalidInput,
    WorkspaceCorrupt,
    WorkspaceFull,
    WorkspaceReadOnly,
)
from jupyter_mlops.store import new_run_id

from .conftest import cli, wait_until


def _points(ws, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(step, value) for _, _, step, value, _ in ws.store.metric_rows(run_id, key)]


# -- points are never lost silently ---------------------------------------------------------


def test_automatic_step_past_int64_is_refused_at_the_call_and_nothing_else_is_lost(any_ws) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    with mlops.start_run("x") as run:
        mlops.log("a", 1.0, step=2**63 - 1)
        with pytest.raises(InvalidInput, match="64-bit limit"):
            mlops.log("a", 2.0)
        for i in range(5):
            mlops.log("b", float(i))
    assert ws.get_run(run.id).status == "completed"
    assert _points(ws, run.id, "a") == [(2**63 - 1, 1.0)]
    assert _points(ws, run.id, "b") == [(i, float(i)) for i in range(5)]


def test_a_point_the_database_refuses_is_dropped_alone_and_the_run_does_not_complete(
        any_ws, capfd: pytest.CaptureFixture[str]) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    with mlops.start_run("bad-point") as run:
        for i in range(3):
            mlops.log("b", float(i))
        # A point that slipped past validation (as a bug in a caller could make one):
        tracking._stack.get()[-1].writer._queue.append(("a", 2**64, 1.0, time.time()))
        for i in range(3, 6):
            mlops.log("b", float(i))
    assert _points(ws, run.id, "b") == [(i, float(i)) for i in range(6)]
    assert _points(ws, run.id, "a") == []
    ended = ws.get_run(run.id)
    assert ended.status == "failed"
    assert "1 logged metric points were refused" in ended.error
    assert f"'a' step {2**64}" in ended.error
    assert f"'a' step {2**64}" in capfd.readouterr().err


def test_metric_values_round_trip_bit_exactly(any_ws) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    values = [-0.0, 0.0, math.inf, -math.inf, 5e-324, -1.7976931348623157e308, 0.1]
    with mlops.start_run("exact") as run:
        for value in values:
            mlops.log("v", value)
        mlops.log("nan", math.nan)
        mlops.log("last_negative_zero", -0.0)
    stored = [value for _, value in _points(ws, run.id, "v")]
    assert [v.hex() for v in stored] == [v.hex() for v in values]  # the sign of zero too
    assert math.isnan(_points(ws, run.id, "nan")[0][1])
    latest = ws.get_run(run.id).metrics()["last_negative_zero"]
    assert math.copysign(1.0, latest) == -1.0


# -- a small disk that fills up ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 16 MB tmpfs holding the workspace (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 16 MB tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    monkeypatch.setenv("JUPYTER_MLOPS_WORKSPACE", str(disk / "ws"))
    try:
        yield disk
    finally:
        from jupyter_mlops.api import _workspace

        for ws in list(_workspace._cache.values()):
            ws.store.close()
        _workspace._cache.clear()
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_flush_on_a_full_disk_raises_a_typed_error_and_logging_resumes(small_disk: Path
                                                                       ) -> None:
    ws = mlops.workspace()
    with mlops.start_run("full") as run:
        mlops.log("loss", 0.0)
        mlops.flush()
        filler = fill(small_disk)
        for i in range(1, 5_001):
            mlops.log("loss", float(i))
        with pytest.raises(WorkspaceFull, match="is full"):
            mlops.flush()
        filler.unlink()
        mlops.flush()  # the points waited in order; nothing was lost
    assert [v for _, v in _points(ws, run.id, "loss")] == [float(i) for i in range(5_001)]
    assert ws.get_run(run.id).status == "completed"


def test_a_full_disk_at_the_end_of_a_run_never_ends_it_completed(small_disk: Path) -> None:
    ws = mlops.workspace()
    with pytest.raises(WorkspaceFull, match="could not be recorded as ended"), \
            mlops.start_run("full-at-end") as run:
        mlops.flush()
        filler = fill(small_disk)
        for i in range(5_000):
            mlops.log("loss", float(i))
    filler.unlink()
    row = ws.store.get_run_row(run.id)
    assert row["status"] == "running"  # never completed; lost once this process is gone
    assert len(_points(ws, run.id, "loss")) < 5_000


def test_a_full_disk_when_the_ending_can_be_written_records_how_many_points_were_lost(
        small_disk: Path) -> None:
    """The points fail but the small status update still fits: the run ends failed, saying
    how many points were not stored and why."""
    ws = mlops.workspace()
    with mlops.start_run("full-points") as run:
        mlops.flush()
        filler = fill(small_disk)
        for i in range(5_000):
            mlops.log("loss", float(i))
        writer = tracking._stack.get()[-1].writer
        # Free a little room once the writer has given up, as another process might:
        original_close = writer.close

        def close_then_free() -> None:
            original_close()
            filler.unlink()

        writer.close = close_then_free
    row = ws.store.get_run_row(run.id)
    assert row["status"] == "failed"
    assert "5000 logged metric points could not be stored" in row["error"]
    assert "full" in row["error"]


# -- damaged, read-only and unreadable workspaces -------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_exit_2(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_a_garbage_database_file_is_one_line_and_left_untouched(ws_dir: Path) -> None:
    ws_dir.mkdir()
    database = ws_dir / "mlops.db"
    database.write_bytes(b"this is not a database\n" * 500)
    before = _sha256(database)
    done = cli("runs", "ls")
    _one_line_exit_2(done, str(database), "damaged or not a SQLite database")
    assert _sha256(database) == before
    with pytest.raises(WorkspaceCorrupt):
        mlops.workspace()
    assert _sha256(database) == before


def test_a_truncated_database_is_one_line_and_left_untouched(ws_dir: Path) -> None:
    ws = mlops.workspace()
    for i in range(300):
        ws.store.create_run(new_run_id(), f"run-{i}", "exp", params={"text": "x" * 500})
    ws.store.close()
    from jupyter_mlops.api import _workspace

    _workspace._cache.clear()
    database = ws_dir / "mlops.db"
    import sqlite3

    with sqlite3.connect(database) as conn:  # fold the WAL into the file first
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = database.read_bytes()
    database.write_bytes(data[: len(data) // 3])
    before = _sha256(database)
    done = cli("runs", "ls")
    _one_line_exit_2(done, str(database), "damaged")
    assert _sha256(database) == before


@pytest.fixture
def read_only_mount() -> Iterator:
    if os.geteuid() != 0:
        pytest.skip("read-only bind mounts need root")
    mounted: list[Path] = []

    def make_read_only(path: Path) -> None:
        for args in (["mount", "--bind", str(path), str(path)],
                     ["mount", "-o", "remount,bind,ro", str(path)]):
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
        mounted.append(path)

    yield make_read_only
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_database_is_a_typed_error_on_the_first_write(ws_dir: Path,
                                                                  read_only_mount) -> None:
    ws = mlops.workspace()
    ws.store.create_run(new_run_id(), "kept", "exp")
    ws.store.close()
    from jupyter_mlops.api import _workspace

    _workspace._cache.clear()
    database = ws_dir / "mlops.db"
    read_only_mount(database)
    done = cli("run", "--name", "new", "-p", "x", "1", "nb.ipynb")
    assert done.returncode == 2
    code = ("import jupyter_mlops as mlops\n"
            "with mlops.start_run('new'):\n    pass\n")
    done = subprocess.run(["python", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(ws_dir)})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jupyter_mlops.errors.WorkspaceReadOnly"), done.stderr
    assert str(database) in last or str(ws_dir) in last
    assert "OperationalError" not in done.stderr.replace("WorkspaceReadOnly", "")


def test_a_read_only_workspace_folder_is_one_line_for_the_cli(ws_dir: Path,
                                                               read_only_mount) -> None:
    ws = mlops.workspace()
    ws.store.create_run(new_run_id(), "kept", "exp")
    ws.store.close()
    from jupyter_mlops.api import _workspace

    _workspace._cache.clear()
    read_only_mount(ws_dir)
    done = cli("runs", "ls")
    _one_line_exit_2(done, str(ws_dir))
    with pytest.raises(WorkspaceReadOnly):
        mlops.workspace()


def test_magics_report_a_damaged_workspace_as_a_usage_error(ws_dir: Path) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    ws_dir.mkdir()
    (ws_dir / "mlops.db").write_bytes(b"garbage" * 1000)
    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    with pytest.raises(UsageError, match="damaged or not a SQLite database"):
        shell.run_line_magic("mlops", "runs")


# -- runs never stay active once their process is gone ------------------------------------------


def test_killed_jobs_are_stored_lost_while_nobody_reads_them(ws) -> None:
    """kill -9 every job process, running and queued: the submitting process's reaper stores
    ``lost`` for each (well within 60 s), without anybody reading the runs."""
    import psutil

    runs = [ws.submit("import time\ntime.sleep(600)", name=f"doomed-{i}") for i in range(3)]
    wait_until(lambda: any(ws.store.get_run_row(r.id)["status"] == "running" for r in runs),
               timeout=120, what="one run to start")
    for run in runs:  # the job processes (runners, their kernels), whatever their state
        pid = wait_until(lambda run=run: ws.store.get_run_row(run.id)["pid"], timeout=60)
        try:
            job = psutil.Process(pid)
            for proc in [*job.children(recursive=True), job]:
                proc.kill()
        except psutil.NoSuchProcess:
            pass
    wait_until(lambda: all(ws.store.get_run_row(r.id)["status"] == "lost" for r in runs),
               timeout=90, what="every killed run to be stored lost")
    assert {ws.store.get_run_row(r.id)["status"] for r in runs} == {"lost"}


def test_a_job_waiting_in_the_queue_is_never_reported_lost(ws) -> None:
    """A queued job older than lost_after, whose process lives, reads and reaps as queued."""
    from jupyter_mlops.jobs import reap

    blocker = ws.submit("import time\ntime.sleep(600)", name="blocker", gpus=0)
    waiting = [ws.submit("x = 1", name=f"waiting-{i}") for i in range(3)]
    wait_until(lambda: blocker.status == "running", timeout=120, what="the blocker to run")
    queued = [r for r in waiting if r.status == "queued"]
    if not queued:
        pytest.skip("this machine has a free slot for every run: nothing waits in the queue")
    old = time.time() - 10 * ws.config.lost_after  # as if it had waited a long time
    for run in queued:
        ws.store.update_run(run.id, created_at=old, heartbeat_at=old)
    assert reap(ws.backend) == []
    assert all(run.status == "queued" for run in queued)
    blocker.cancel(wait=True)
    for run in waiting:
        wait_until(lambda run=run: run.status == "completed", timeout=180,
                   what=f"{run.name} to complete")
