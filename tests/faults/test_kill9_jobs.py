"""SIGKILL of job processes at random moments (issue 10).

Each job logs points in batches; after every ``mlops.flush()`` (which returns once the points
are durable) it writes how many points are acknowledged to a side file. The test kills the
job at a random moment — queued, starting or running — choosing the victim at random: the
runner alone, the kernel alone, or the runner with its kernel. Then:

- the store is never corrupt (``PRAGMA integrity_check``),
- every acknowledged point is in the store,
- every run reads terminal within 60 s of its kill, and none is left stored active once
  a process has opened the workspace (which runs the reaper once, as documented).

Quick: 8 kills; ``--soak``: 50.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ._harness import (
    ACTIVE,
    TERMINAL,
    alive,
    family,
    integrity,
    kill,
    kill_tree,
    open_workspace_elsewhere,
    percentiles,
    stored_runs,
    wait_until,
)

CELL = """
import os, pathlib, time
import jupyter_mlops as mlops
ack = pathlib.Path(ack_file)
n = 0
for _ in range(batches):
    for _ in range(per_batch):
        mlops.log("x", float(n), step=n)
        n += 1
    mlops.flush()  # durable from here on: acknowledge
    tmp = ack.with_name(ack.name + ".tmp")
    tmp.write_text(str(n))
    os.replace(tmp, ack)
    time.sleep(0.02)
"""
IN_FLIGHT = 3  # jobs alive at once (2 CPU slots: one of them waits queued)
TERMINAL_WITHIN = 60.0  # seconds after the kill (the bound)


def _victims(run: Any, kind: str) -> list[int]:
    info = run.info()
    runner = info["pid"]
    kernel = (info["resources"] or {}).get("kernel_pid")
    if kind == "kernel" and kernel and alive(kernel):
        return kill_tree(kernel)
    if kind == "runner" or (kind == "kernel" and not kernel):
        return [runner] if kill(runner) else []
    return kill_tree(runner)


def test_kill9_jobs_lose_no_acknowledged_point(fault_ws: Any, ws_dir: Path, tmp_path: Path,
                                               soak: bool, figures: dict) -> None:
    ws, rng = fault_ws, random.Random(10)
    total = 50 if soak else 8
    jobs: list[dict[str, Any]] = []
    pending = list(range(total))
    integrity_checks: list[list[str]] = []
    while pending or any(j["seen"] is None for j in jobs):
        now = time.monotonic()
        in_flight = [j for j in jobs if j["killed"] is None]
        if pending and len(in_flight) < IN_FLIGHT:
            i = pending.pop(0)
            ack = tmp_path / f"ack-{i}"
            run = ws.submit(CELL, params={"ack_file": str(ack), "batches": 2000,
                                          "per_batch": 50}, namespace={}, name=f"k9-{i}")
            jobs.append({"i": i, "run": run, "ack": ack, "kill_at": now + rng.uniform(0, 6),
                         "kind": rng.choice(["runner", "kernel", "tree"]), "killed": None,
                         "phase": None, "seen": None, "procs": []})
        for job in jobs:
            run = job["run"]
            if job["killed"] is None and now >= job["kill_at"]:
                job["phase"] = run.status
                job["procs"] = [p.pid for p in family(run.info()["pid"])]
                job["victims"] = _victims(run, job["kind"])
                job["killed"] = time.monotonic()
                integrity_checks.append(integrity(ws_dir))  # while the others keep writing
            elif job["killed"] is not None and job["seen"] is None:
                status = ws.get_run(run.id).status
                if status in TERMINAL:
                    job["seen"], job["status"] = time.monotonic(), status
                else:
                    assert time.monotonic() - job["killed"] < TERMINAL_WITHIN, (
                        f"run {run.id} killed ({job['kind']}) while {job['phase']} still "
                        f"reads {status} {TERMINAL_WITHIN:g} s later")
        time.sleep(0.05)

    # Every process of every job is gone (an orphaned kernel could still write).
    leftovers = []
    for job in jobs:
        try:
            wait_until(lambda: not any(alive(p) for p in job["procs"]), 30)
        except AssertionError:
            leftovers += [p for p in job["procs"] if alive(p)]
            for pid in job["procs"]:
                kill(pid)
    checks = integrity_checks + [integrity(ws_dir)]

    missing: dict[str, int] = {}
    acknowledged = 0
    for job in jobs:
        acked = int(job["ack"].read_text()) if job["ack"].exists() else 0
        acknowledged += acked
        history = ws.get_run(job["run"].id).metric_history("x")
        steps = set(history["step"].tolist()) if len(history) else set()
        lost_points = len(set(range(acked)) - steps)
        if lost_points:
            missing[job["run"].id] = lost_points

    stored_before = [r["id"] for r in stored_runs(ws_dir) if r["status"] in ACTIVE]
    opened = open_workspace_elsewhere(ws_dir)
    stored_after = {r["id"]: r["status"] for r in stored_runs(ws_dir) if r["status"] in ACTIVE}

    figures.update(
        kills=len(jobs),
        killed_while={p: sum(j["phase"] == p for j in jobs) for p in ACTIVE},
        victims={k: sum(j["kind"] == k for j in jobs) for k in ("runner", "kernel", "tree")},
        statuses={s: sum(j["status"] == s for j in jobs) for s in TERMINAL},
        to_terminal_s=percentiles(j["seen"] - j["killed"] for j in jobs),
        acknowledged_points=acknowledged, missing_points=sum(missing.values()),
        corrupt_checks=sum(c != ["ok"] for c in checks), integrity_checks=len(checks),
        stored_active_before_reaper=len(stored_before),
        stored_active_after_reaper=len(stored_after),
        orphan_processes=len(leftovers),
    )
    assert all(c == ["ok"] for c in checks), f"integrity_check: {checks}"
    assert not missing, f"acknowledged points missing from the store: {missing}"
    assert opened.returncode == 0, opened.stderr
    assert not stored_after, f"runs still stored active after the reaper ran: {stored_after}"
    assert not leftovers, f"job processes still alive 30 s after the kill: {leftovers}"
