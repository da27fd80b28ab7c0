"""Restarting the notebook kernel never loses a job, and re-attaching always works (issue 10).

A real notebook kernel (jupyter_client + ipykernel) starts jobs with ``%%train``; each job
logs a step every 0.1 s until the test drops a stop file. The kernel is then restarted again
and again; after each restart the fresh kernel reads every run with ``ws.get_run(id)`` (it
must be live: ``running``, not lost) and re-opens its widget with ``%mlops attach``, and
that widget must show the run's history and keep following it (its latest step advances).
At the end every job completes.

Quick: 2 jobs x 3 restarts; ``--soak``: 5 jobs x 20 restarts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ._harness import TERMINAL, child_env, percentiles, wait_until

TRAIN = """%%train --name live-{i}
import time
step = 0
while not stop.exists():
    mlops.log("step", float(step), step=step)
    step += 1
    time.sleep(0.1)
"""
ATTACH = """
%load_ext jupyter_mlops
import json, jupyter_mlops as mlops
from jupyter_mlops.widgets import _display
ws = mlops.workspace()
views, seen = {{}}, {{}}
for rid in {ids!r}:
    run = ws.get_run(rid)
    get_ipython().run_line_magic("mlops", f"attach {{rid}}")
    views[rid] = _display.shown[-1]  # the widget %mlops attach displayed
    seen[rid] = {{"status": run.status, "step": views[rid].feed.latest.get("step", {{}}).get("step"),
                 "history": views[rid].feed.counts().get("step", 0)}}
print("ATTACH " + json.dumps(seen))
"""
PROGRESS = ('print("PROGRESS " + json.dumps({rid: [w.feed.status, '
            'w.feed.latest.get("step", {}).get("step")] for rid, w in views.items()}))')


class Kernel:
    """A notebook kernel driven as a notebook frontend would (execute requests)."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> str:
        """Execute ``code``; return its stdout, raise with the traceback if it failed."""
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        text = "".join(out)
        assert reply["content"]["status"] == "ok", f"cell failed:\n{code}\n{text}"
        return text

    def line(self, code: str, prefix: str) -> Any:
        for line in self.run(code).splitlines():
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1:])
        raise AssertionError(f"no {prefix} line in the output of:\n{code}")

    def restart(self) -> None:
        self.km.restart_kernel(now=True)  # kill -9 of the kernel, then a fresh one
        self.kc.wait_for_ready(timeout=60)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def test_kernel_restarts_lose_no_job_and_reattach_works(fault_ws: Any, ws_dir: Path,
                                                        tmp_path: Path, soak: bool,
                                                        figures: dict) -> None:
    pytest.importorskip("ipykernel")
    n_jobs, restarts = (5, 20) if soak else (2, 3)
    stop = tmp_path / "stop"
    env = child_env(ws_dir, JUPYTER_MLOPS_CPU_SLOTS=str(n_jobs), JUPYTER_MLOPS_GPUS="")
    kernel = Kernel(tmp_path, env)
    ws = fault_ws
    ids: list[str] = []
    attach_s, follow_s, statuses_seen = [], [], []
    try:
        kernel.run(f"%load_ext jupyter_mlops\nimport pathlib\nimport jupyter_mlops as mlops\n"
                   f"stop = pathlib.Path({str(stop)!r})")
        for i in range(n_jobs):
            kernel.run(TRAIN.format(i=i))
            ids += kernel.line("import json\nprint('ID ' + json.dumps(_run.id))", "ID").split()
        wait_until(lambda: all(ws.get_run(r).metrics().get("step") for r in ids), 120,
                   "every job to log")

        for _ in range(restarts):
            before = {r: ws.get_run(r).metrics()["step"] for r in ids}
            started = time.monotonic()
            kernel.restart()
            seen = kernel.line(ATTACH.format(ids=ids), "ATTACH")
            attach_s.append(time.monotonic() - started)
            statuses_seen += [s["status"] for s in seen.values()]
            for rid, view in seen.items():
                assert view["status"] == "running", f"run {rid} reads {view['status']} after a restart"
                assert view["history"] >= before[rid], f"the re-attached widget of {rid} lacks history"
            first = {rid: view["step"] for rid, view in seen.items()}

            def advanced() -> bool:
                now = kernel.line(PROGRESS, "PROGRESS")
                return all(now[r][1] is not None and now[r][1] > (first[r] or -1) for r in ids)

            wait_until(advanced, 60, "every re-attached widget to show new steps")
            follow_s.append(time.monotonic() - started)

        stop.touch()
        wait_until(lambda: all(ws.get_run(r).status in TERMINAL for r in ids), 120,
                   "the jobs to end")
    finally:
        stop.touch()
        kernel.close()
    final = {r: ws.get_run(r).status for r in ids}
    figures.update(jobs=n_jobs, restarts=restarts,
                   lost=sum(s == "lost" for s in final.values()),
                   final_statuses=sorted(final.values()),
                   reads_not_running=sum(s != "running" for s in statuses_seen),
                   restart_to_attached_s=percentiles(attach_s),
                   restart_to_widget_follows_s=percentiles(follow_s))
    assert all(s == "completed" for s in final.values()), final
