"""Sweep chaos: trial processes killed every few seconds, the controller killed once (issue 10).

A sweep with ``retry_failed=1`` (the product's way to ask for retries: a failed or lost trial
is re-run once with the same parameters) runs short trials. Every few seconds the test
SIGKILLs a running trial's job (runner and kernel). Once, the controller is SIGKILLed; when
the sweep reads ``lost`` it is resumed with ``Sweep.resume()``. Before killing the controller
the test waits until the trials killed so far have their retries, so the controller kill
does not race the record of a trial kill. Then:

- 0 trials left running (as read, and as stored once a process opened the workspace),
- trial numbers are unique,
- every killed original trial was retried with the same parameters,
- the sweep completes with as many original trials as asked.

Quick: 8 trials; ``--soak``: 30.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from ._harness import (
    ACTIVE,
    TERMINAL,
    kill_tree,
    open_workspace_elsewhere,
    percentiles,
    stored_runs,
    wait_until,
)

TRIAL = """
import time, jupyter_mlops as mlops
for step in range(10):
    mlops.log("score", x + step / 100, step=step)
    time.sleep(0.2)
"""
KILL_EVERY = (2.0, 4.0)  # seconds between two trial kills (random in this range)


def test_sweep_chaos_leaves_nothing_running_and_retries(fault_ws: Any, ws_dir: Path,
                                                        soak: bool, figures: dict) -> None:
    ws, rng = fault_ws, random.Random(30)
    trials = 30 if soak else 8
    sweep = ws.sweep(TRIAL, params={"x": "randint(0, 1000000)"}, metric="score", goal="max",
                     trials=trials, concurrency=2, retry_failed=1, namespace={}, seed=5,
                     name="chaos")
    killed: dict[str, float] = {}  # run id -> when
    controller_killed_at: float | None = None
    resumed_after: float | None = None
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
    deadline = time.monotonic() + (1800 if soak else 400)

    def retried(run_id: str) -> bool:
        return any(r["tags"].get("sweep.retry_of") == run_id for r in sweep.trial_rows())

    while sweep.status not in TERMINAL or (sweep.status == "lost" and resumed_after is None):
        assert time.monotonic() < deadline, f"the sweep is still {sweep.status}: {sweep.progress()}"
        rows = sweep.trial_rows()
        done = sum(r["status"] in TERMINAL for r in rows)
        if controller_killed_at is None and done >= trials // 3:
            # Let the controller record the kills so far, then kill it.
            wait_until(lambda: all(retried(r) for r in killed), 120,
                       "the killed trials' retries before the controller kill")
            pid = sweep.info()["pid"]
            os.kill(pid, signal.SIGKILL)
            controller_killed_at = time.monotonic()
            wait_until(lambda: sweep.status == "lost", 60, "the sweep to read lost")
            sweep.resume()
            wait_until(lambda: sweep.status == "running", 120, "the resumed controller")
            resumed_after = time.monotonic() - controller_killed_at
            continue
        if time.monotonic() >= next_kill:
            running = [r for r in rows if r["status"] == "running" and r["id"] not in killed
                       and not r["tags"].get("sweep.retry_of")]
            if running:
                victim = rng.choice(running)
                kill_tree(victim["pid"])
                killed[victim["id"]] = time.monotonic()
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
        time.sleep(0.1)

    wait_until(lambda: all(r["status"] in TERMINAL for r in sweep.trial_rows()), 120,
               "every trial to end")
    rows = sweep.trial_rows()
    by_id = {r["id"]: r for r in rows}
    numbers = [r["trial_number"] for r in rows]
    originals = [r for r in rows if not r["tags"].get("sweep.retry_of")]
    retries = {r["tags"]["sweep.retry_of"]: r for r in rows if r["tags"].get("sweep.retry_of")}
    not_retried = [rid for rid in killed
                   if by_id[rid]["status"] in ("failed", "lost") and rid not in retries]
    wrong_params = [rid for rid, r in retries.items() if r["params"] != by_id[rid]["params"]]
    opened = open_workspace_elsewhere(ws_dir)
    stored_active = [r["id"] for r in stored_runs(ws_dir)
                     if r["sweep_id"] == sweep.id and r["status"] in ACTIVE]

    figures.update(
        trials=trials, trial_runs=len(rows), trial_kills=len(killed),
        killed_statuses=sorted(by_id[r]["status"] for r in killed),
        retries=len(retries), controller_killed=controller_killed_at is not None,
        controller_kill_to_resumed_running_s=round(resumed_after or 0, 3),
        statuses={s: sum(r["status"] == s for r in rows) for s in TERMINAL},
        sweep_status=sweep.status, duplicate_numbers=len(numbers) - len(set(numbers)),
        not_retried=len(not_retried), stored_active_after_reaper=len(stored_active),
        repeated_params=sorted({r["params"]["x"] for r in originals if sum(
            o["params"]["x"] == r["params"]["x"] for o in originals) > 1}),
        not_retried_detail=[{"trial": by_id[r]["trial_number"], "status": by_id[r]["status"],
                             "x": by_id[r]["params"]["x"],
                             "killed_s_after_controller_kill": round(
                                 killed[r] - (controller_killed_at or 0), 2)}
                            for r in not_retried],
        trial_seconds=percentiles((r["ended_at"] or 0) - (r["started_at"] or 0)
                                  for r in rows if r["started_at"]),
    )
    assert controller_killed_at is not None, "the sweep ended before the controller kill"
    assert opened.returncode == 0, opened.stderr
    assert not stored_active, f"trials still stored active: {stored_active}"
    assert len(numbers) == len(set(numbers)), f"trial numbers repeat: {sorted(numbers)}"
    assert not not_retried, f"killed trials that were not retried: {not_retried}"
    assert not wrong_params, f"retries with other parameters: {wrong_params}"
    assert len(originals) == trials, (len(originals), trials)
    assert sweep.status == "completed", (sweep.status, sweep.info()["error"])
