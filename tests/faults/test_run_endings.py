"""Every way a run ends reaches the right terminal state (issue 10), and how fast.

Each ending is a real ``ws.submit`` of a cell. The time reported is from the moment the
ending was caused (the cell's own mark just before it ends, the test's signal or cancel,
the timeout's expiry) to the first read of the terminal state through ``ws.get_run``.

Decisions where the issue leaves a choice: ``sys.exit(0)`` in a cell is a clean end
(``completed``), ``sys.exit(1)`` a failure (``failed``); ``os._exit`` and a SIGKILLed kernel
may read ``failed`` or ``lost``; there is no product setting for a memory limit, so the
out-of-memory cell sets ``RLIMIT_AS`` on its own kernel with ``resource.setrlimit`` and
then allocates until ``MemoryError``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._harness import TERMINAL, kill, kill_tree, percentiles, wait_until

MARK = "import pathlib, time\ndef mark():\n    pathlib.Path(mark_file).write_text(repr(time.time()))\n"
SLEEP = "mark()\nwhile True:\n    time.sleep(0.1)\n"

# name: (cell code, how the test ends it, accepted statuses, text the error must hold)
ENDINGS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "normal": (MARK + "x = sum(range(1000))\nmark()\n", "self", ("completed",), None),
    "exception": (MARK + "mark()\nraise ValueError('boom')\n", "self", ("failed",),
                  "ValueError: boom"),
    "sys_exit_0": (MARK + "import sys\nmark()\nsys.exit(0)\n", "self", ("completed",), None),
    "sys_exit_1": (MARK + "import sys\nmark()\nsys.exit(1)\n", "self", ("failed",), None),
    "os_exit": (MARK + "import os\nmark()\nos._exit(3)\n", "self", ("failed", "lost"), None),
    "kernel_sigkill": (MARK + SLEEP, "kernel", ("failed", "lost"), None),
    "runner_sigkill": (MARK + SLEEP, "runner", ("lost",), None),
    "cancel": (MARK + SLEEP, "cancel", ("canceled",), None),
    "timeout": (MARK + SLEEP, "timeout", ("failed",), "timed out"),
    "oom": (MARK + (
        "import os, resource\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * page\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, hard))\n"
        "blocks = []\n"
        "mark()\n"
        "try:\n"
        "    while True:\n"
        "        blocks.append(bytearray(16 * 2**20))\n"
        "except MemoryError:\n"
        "    blocks.clear()  # the kernel must be able to report the error\n"
        "    raise\n"), "self", ("failed",), "MemoryError"),
}
TIMEOUT = 4.0  # seconds, for the "timeout" ending
DEADLINE = 120.0  # generous bound on any single ending (only stops a hung test)


def test_every_ending_reaches_its_terminal_state(fault_ws: Any, tmp_path: Path, soak: bool,
                                                 figures: dict, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "3")
    repeats = 10 if soak else 1
    ws = fault_ws
    jobs: list[dict[str, Any]] = []
    for rep in range(repeats):
        for name, (code, how, accepted, text) in ENDINGS.items():
            mark = tmp_path / f"{name}-{rep}.mark"
            run = ws.submit(code, params={"mark_file": str(mark)}, namespace={},
                            name=f"{name}-{rep}", timeout=TIMEOUT if how == "timeout" else None)
            jobs.append({"name": name, "how": how, "accepted": accepted, "text": text,
                         "mark": mark, "run": run, "caused": None, "seen": None})

    deadline = time.monotonic() + DEADLINE * max(1, repeats)
    while any(j["seen"] is None for j in jobs):
        assert time.monotonic() < deadline, "endings still pending: " + ", ".join(
            f"{j['name']} ({j['run'].status})" for j in jobs if j["seen"] is None)
        for job in jobs:
            if job["seen"] is not None:
                continue
            run = job["run"]
            if job["caused"] is None and job["how"] == "timeout":
                # The clock starts when the job does, whether or not the cell got to run
                # (on a loaded machine the kernel's boot can take the whole timeout).
                started = run.info()["started_at"]
                if started:
                    job["caused"] = started + TIMEOUT
            elif job["caused"] is None and job["mark"].exists():
                marked = job["mark"].read_text()
                if job["how"] == "self" and marked:
                    job["caused"] = float(marked)
                elif job["how"] == "kernel":
                    kernel = (run.info()["resources"] or {}).get("kernel_pid")
                    if kernel:
                        kill_tree(kernel)
                        job["caused"] = time.time()
                elif job["how"] == "runner":
                    kill(run.info()["pid"])
                    job["caused"] = time.time()
                elif job["how"] == "cancel":
                    run.cancel()
                    job["caused"] = time.time()
            status = run.status
            if status in TERMINAL:
                job["seen"] = time.time()
                job["status"] = status
                if job["caused"] is None and job["how"] == "self":
                    # The mark may have been read half-written (created, not yet filled)
                    # just before the cell ended; it is complete now.
                    marked = job["mark"].read_text() if job["mark"].exists() else ""
                    job["caused"] = float(marked) if marked else None
        time.sleep(0.05)

    wrong = []
    for job in jobs:
        run = job["run"]
        ok = job["status"] in job["accepted"]
        if ok and job["text"] is not None:
            ok = job["text"] in (run.error or "")
        if not ok:
            wrong.append(f"{job['name']}: {job['status']} (expected {'/'.join(job['accepted'])}"
                         + (f" with {job['text']!r} in the error" if job["text"] else "")
                         + f"); error: {(run.error or '').strip().splitlines()[-1:]}")
    per_kind: dict[str, Any] = {}
    for name in ENDINGS:
        mine = [j for j in jobs if j["name"] == name]
        per_kind[name] = {
            "statuses": sorted({j["status"] for j in mine}),
            "to_terminal_s": percentiles(j["seen"] - j["caused"] for j in mine
                                         if j["caused"] is not None),
        }
    figures.update(runs=len(jobs), wrong=len(wrong), endings=per_kind,
                   to_terminal_s=percentiles(j["seen"] - j["caused"] for j in jobs
                                             if j["caused"] is not None))
    never_caused = [j["name"] for j in jobs if j["caused"] is None]
    assert not wrong, "runs that ended in the wrong state:\n" + "\n".join(wrong)
    assert not never_caused, f"ended before the test could act: {never_caused}"
