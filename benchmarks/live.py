"""How long until a logged value is visible in the run widget.

A real job (``%%train`` through IPython, a detached process running papermill in its own
kernel) logs 200 points, each point's value being the wall time at the ``mlops.log`` call.
A ``RunWidget`` follows the run as it would under a notebook cell; an observer on the chart's
line notes the wall time each new point arrives in the widget's state. Delay = arrival − log
time (same machine, same clock). Also prints the components that bound it: the writer's flush
interval and the widget's poll interval.

    python benchmarks/live.py [--points 200] [--interval 0.05]

Target (issue 4): p95 under 500 ms.
"""

from __future__ import annotations

import os
import sys

# benchmarks/logging.py (a name the issue fixes) would shadow the standard library's logging
# for scripts run from this folder: take the folder off the import path first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def measure(points: int, interval: float) -> np.ndarray:
    from IPython.testing.globalipapp import get_ipython

    from jupyter_mlops import tracking
    from jupyter_mlops.widgets import RunWidget

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    shell.run_cell("import time\nimport jupyter_mlops as mlops")
    run = shell.run_cell_magic(
        "train", f"--name live-bench -p points={points} -p interval={interval}",
        "for i in range(points):\n"
        "    mlops.log('t', time.time(), step=i)\n"
        "    time.sleep(interval)\n",
    )
    while run.status in ("queued", "starting"):
        time.sleep(0.01)
    widget = RunWidget(run)
    arrivals: dict[int, float] = {}

    def on_y(change: dict) -> None:
        now = time.time()
        for step, value in zip(widget.charts["t"].line.x, change["new"]):
            arrivals.setdefault(int(step), now - value)

    while "t" not in widget.charts:
        time.sleep(0.01)
    # Points that were already there when the widget was built are history, not latency.
    history = {int(s) for s in widget.charts["t"].line.x}
    widget.charts["t"].line.observe(on_y, names=["y"])
    run.wait(timeout=600)
    widget.refresh()
    widget.stop()
    print(f"  run {run.id}: {len(arrivals)} points observed live, {len(history)} seen as "
          f"history at attach; writer flush interval {tracking.FLUSH_INTERVAL * 1000:.0f} ms, "
          f"widget poll interval {widget.poll_interval * 1000:.0f} ms")
    return np.array([d for s, d in arrivals.items() if s not in history]) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between logs")
    args = parser.parse_args()
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_MLOPS_WORKSPACE"] = os.path.join(tmp, "ws")
        os.chdir(tmp)
        try:
            delays = measure(args.points, args.interval)
        finally:
            os.chdir(home)
    if len(delays) < args.points // 2:
        print(f"only {len(delays)} points were observed live: the measurement is not valid")
        return 1
    p50, p95, worst = np.percentile(delays, [50, 95, 100])
    print(f"\nlog → widget state delay over {len(delays)} points:")
    print(f"  p50 {p50:7.1f} ms\n  p95 {p95:7.1f} ms\n  max {worst:7.1f} ms")
    verdict = "PASS" if p95 < 500 else "MISS"
    print(f"\ntarget p95 < 500 ms: {verdict} (p95 is {p95 / 500:.2f}× the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
