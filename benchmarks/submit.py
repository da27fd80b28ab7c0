"""How long does ``%%train`` take for a trivial cell, beside bare papermill and a bare kernel?

Measures, in one run and on this machine, with the same trivial code everywhere
(``import time; t0 = time.time(); print(...)``, whose first line tells when user code ran):

* a bare ``jupyter_client`` kernel: ``KernelManager.start_kernel`` + ``client.wait_for_ready``
  (start to ready) — the floor of any notebook execution;
* the ``papermill`` CLI as a subprocess on a 3-code-cell notebook shaped like a ``%%train``
  job notebook (parameters cell, restore cell, the code): time to the first user line and to
  the process exit; and the same CLI with ``rfc3987_syntax`` hidden, the 1.8 s jsonschema
  import stall we avoid in our own processes (``jupyter_mlops/_fastimport.py``), which is
  what the CLI costs where that package is not installed;
* ``papermill.execute_notebook`` in this (warm) process, on the same notebook;
* ``%%train --wait`` driven through ``IPython.testing.globalipapp`` with
  ``%load_ext jupyter_mlops`` and a fresh temporary workspace (``JUPYTER_MLOPS_WORKSPACE``):
  time from calling the magic to the first user line, to the run being ``completed``
  (``ended_at``) and to the magic returning; and the same with ``mlops.log`` as the first
  line (the job kernel then imports jupyter_mlops and opens the workspace);
* the same two ``%%train`` contenders with warm starts (``JUPYTER_MLOPS_WARM=1``, issue 17):
  this host's agent hands the run to a job process that has done its imports and started
  its kernel ahead of time. The agent is started by the warm-up round and stopped at the end;
  between two warm rounds the other contenders run, which leaves the agent time to boot the
  next warm process (as a notebook user's think time would);
* a fresh kernel's first warm ``%%train``: a new process with an IPython shell and the
  extension loaded, timed from the magic's call to the first user line (what the first
  ``%%train`` of a notebook session imports is on this path).

Repetitions run round-robin (one of each per round, after one warm-up round), so a noisy
neighbour slows all contenders alike; each line gives the median and the max.

Then the ``%%train`` time is broken down into phases, from timestamps taken in the notebook
process, in the job process (a ``sitecustomize`` tracer on ``PYTHONPATH`` wraps a few
functions of the runner, papermill and jupyter_client; it costs microseconds) and in the
store (``created_at``, ``started_at``, ``ended_at``). It also counts kernel shutdowns that
needed a SIGTERM after ``shutdown_wait_time / 2`` (2.5 s): the cause of papermill's
occasional 5 s runs (see ``STALL`` below).

It ends with the differences and ratios against the targets: ``%%train`` adds under 0.5 s
to the bare papermill (CLI) time (issue 4), and a warm ``%%train`` reaches the user's first
line within 0.3x a bare kernel's start to ready, measured in the same run (issue 17).

Run it on demand (it is not a test)::

    python benchmarks/submit.py [--reps 7] [--no-trace]
"""

from __future__ import annotations

import os
import sys

# Measure the checkout this file belongs to, whatever copy is installed.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [
    os.path.dirname(_here),
    *(p for p in sys.path if os.path.abspath(p or os.curdir) != _here),
]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TARGET_ADDED_S = 0.5  # %%train may add this much to the bare papermill CLI time
TARGET_WARM_RATIO = 0.3  # warm %%train: submit -> first user line, over a bare kernel's start

CODE = 'import time; t0 = time.time(); print(f"first-line {t0!r}")\nx = 1'
CODE_LOG = ("import time; mlops.log('t0', time.time())\n"
            'print("logged")')
FIRST_LINE = re.compile(r"first-line ([0-9.]+)")

STALL = """\
The stall (py-spy dumps of kernels still alive 1.2 s after the shutdown_request): with a
graceful shutdown (papermill's default: interrupt, shutdown_request, then up to
shutdown_wait_time = 5 s with a SIGTERM at half of it), ipykernel 7 sometimes hangs in
IPKernelApp.close(), an atexit hook: it stops the IOPub thread, then joins the control
thread, which is still in its post-handler sys.stdout.flush() (kernelbase.py:408) and waits
for the stopped IOPub thread, in OutStream.flush (Event.wait, flush_timeout = 10 s) or
blocked in IOPubThread.schedule's Socket.send. jupyter_client sends SIGTERM at 2.5 s: the
run takes 2.5 s more. The user's atexit hooks have already run by then (registered later,
run earlier), so nothing is lost, only time. The job runner is immune: it never asks its
kernel to shut down, it kills it once papermill returns."""

# A tracer for the job process, installed as ``sitecustomize`` through PYTHONPATH. Only a
# process that finds MLOPS_BENCH_TRACE in its environment traces (and removes it, so the
# kernels it starts do not). It wraps functions when their module is first imported and
# appends [pid, event, time] lines to the file the variable names.
TRACER = r'''
import os, sys, time
_FILE = os.environ.pop("MLOPS_BENCH_TRACE", None)
if _FILE:
    import functools, importlib.abc, importlib.util, inspect, json, threading
    _T, _lock = time.time(), threading.Lock()

    def mark(name, t=None):
        with _lock, open(_FILE, "a") as f:
            f.write(json.dumps([os.getpid(), name, time.time() if t is None else t]) + "\n")

    try:  # when the kernel created this process (10 ms resolution)
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        mark("process created", time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    mark("interpreter up", _T)

    def _wrap(owner, attr, label):
        f = getattr(owner, attr)
        if inspect.iscoroutinefunction(f):
            async def w(*a, **k):
                mark(label + " <")
                try:
                    return await f(*a, **k)
                finally:
                    mark(label + " >")
        else:
            def w(*a, **k):
                mark(label + " <")
                try:
                    return f(*a, **k)
                finally:
                    mark(label + " >")
        setattr(owner, attr, functools.update_wrapper(w, f))

    PATCHES = {
        "jupyter_mlops.workspace._workspace": [(None, "workspace", "workspace()")],
        "jupyter_mlops.compute.local": [("LocalTarget", "claim", "claim")],
        "jupyter_mlops.jobs._execute": [(None, "_execute_claimed", "execute"),
                                        (None, "kill_tree", "kill kernel"),
                                        (None, "_finish", "store files + status")],
        "jupyter_mlops._environment": [(None, "capture_environment", "capture_environment")],
        "papermill": [],
        "papermill.execute": [(None, "execute_notebook", "papermill.execute_notebook")],
        "jupyter_client.manager": [
            ("AsyncKernelManager", "start_kernel", "start_kernel"),
            ("AsyncKernelManager", "_async_send_kernel_sigterm", "SIGTERM to kernel")],
        "jupyter_client.asynchronous.client": [
            ("AsyncKernelClient", "wait_for_ready", "wait_for_ready")],
        "papermill.clientwrap": [("PapermillNotebookClient", "execute_cell", "cell")],
        "nbclient.client": [("NotebookClient", "start_new_kernel_client", "kernel client")],
    }

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                mark("import " + name + " <")
                run(module)
                for cls, attr, label in PATCHES[name]:
                    owner = getattr(module, cls) if cls else module
                    if hasattr(owner, attr):
                        _wrap(owner, attr, label)
                mark("import " + name + " >")

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
'''


# -- helpers -------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def _fmt(values: list[float]) -> str:
    if not values:
        return "      -        -"
    med, mx = _stats(values)
    return f"{med:7.3f}  {mx:7.3f}"


def _papermill_exe() -> list[str]:
    """The papermill entry point of this interpreter (not a pyenv/asdf shim script)."""
    beside = Path(sys.executable).parent / "papermill"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("papermill")
    return [found] if found else [sys.executable, "-m", "papermill"]


def _write_notebook(path: Path, code: str) -> None:
    """Three code cells, as the job notebook %%train builds: parameters, restore, the code."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(
        cells=[
            new_markdown_cell("Baseline of benchmarks/submit.py"),
            new_code_cell("# no parameters", metadata={"tags": ["parameters"]}),
            new_code_cell("# names carried from the notebook"),
            new_code_cell(code),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    nbformat.write(nb, path)


def _first_line_in(nb_path: Path) -> float | None:
    text = nb_path.read_text()
    found = FIRST_LINE.search(text)
    return float(found.group(1)) if found else None


def _read_trace(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        _pid, name, stamp = json.loads(line)
        events.append((name, stamp))
    return events


# -- contenders ----------------------------------------------------------------------------


FIRST_TRAIN = """\
import sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "jupyter_mlops")
called = time.time()
shell.run_cell("%%train --wait\\n" + sys.argv[1]).raise_error()
print(f"called {called!r}")
"""


def bench_first_train(folder: Path) -> dict[str, float]:
    """A notebook kernel's first ``%%train`` (warm): a new process with an IPython shell and
    the extension loaded, timed from the magic's call to the user's first line. Nothing of
    jupyter-mlops' submit path is imported before the call, as in a fresh kernel."""
    done = subprocess.run([sys.executable, "-c", FIRST_TRAIN, CODE], capture_output=True,
                          text=True, timeout=300, cwd=folder)
    if done.returncode != 0:
        raise RuntimeError(f"the first %%train failed: {done.stderr[-2000:]}")
    called = float(re.search(r"called ([0-9.]+)", done.stdout).group(1))  # type: ignore
    first = float(FIRST_LINE.search(done.stdout).group(1))  # type: ignore[union-attr]
    return {"first_line": first - called}


def bench_kernel() -> dict[str, float]:
    from jupyter_client.manager import KernelManager

    start = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        return {"ready": time.perf_counter() - start}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# The papermill CLI with the one import stall of jsonschema we know and avoid ourselves
# (jupyter_mlops/_fastimport.py): what the CLI costs where rfc3987_syntax is not installed.
NO_STALL_CLI = ("import sys; sys.modules['rfc3987_syntax'] = None; "
                "from papermill.cli import papermill; papermill()")


def bench_papermill_cli(folder: Path, nb: Path, trace: bool, no_stall: bool = False
                        ) -> dict[str, Any]:
    out = folder / "out-cli.ipynb"
    out.unlink(missing_ok=True)
    trace_file = folder / f"trace-cli-{time.monotonic_ns()}.jsonl"
    env = dict(os.environ)
    if trace:
        env["MLOPS_BENCH_TRACE"] = str(trace_file)
    command = [sys.executable, "-c", NO_STALL_CLI] if no_stall else _papermill_exe()
    start = time.time()
    proc = subprocess.run([*command, str(nb), str(out)], capture_output=True,
                          text=True, env=env, cwd=folder)
    total = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"papermill failed:\n{proc.stderr[-2000:]}")
    first = _first_line_in(out)
    events = _read_trace(trace_file)
    return {"first": first - start if first else None, "total": total,
            "sigterm": sum(1 for n, _ in events if n == "SIGTERM to kernel <"),
            "events": events, "t0": start}


def bench_papermill_inproc(folder: Path, nb: Path, sigterms: list[float]) -> dict[str, Any]:
    import papermill

    out = folder / "out-inproc.ipynb"
    before = len(sigterms)
    start = time.time()
    papermill.execute_notebook(str(nb), str(out), progress_bar=False)
    total = time.time() - start
    first = _first_line_in(out)
    return {"first": first - start if first else None, "total": total,
            "sigterm": len(sigterms) - before}


def bench_train(shell: Any, folder: Path, code: str, trace: bool, notebook_marks: list
                ) -> dict[str, Any]:
    trace_file = folder / f"trace-train-{time.monotonic_ns()}.jsonl"
    if trace:
        os.environ["MLOPS_BENCH_TRACE"] = str(trace_file)
    notebook_marks.clear()
    try:
        start = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            run = shell.run_cell_magic("train", "--wait", code)
        returned = time.time()
    finally:
        os.environ.pop("MLOPS_BENCH_TRACE", None)
    row = run.info()
    if row["status"] != "completed":
        raise RuntimeError(f"run {run.id} ended {row['status']}: {row['error']}")
    if "mlops.log" in code:
        first = run.metrics()["t0"]
    else:
        found = FIRST_LINE.search(run.logs())
        first = float(found.group(1)) if found else None
    events = [("magic called", start), *notebook_marks,
              ("created_at (queued)", row["created_at"]),
              ("started_at (starting)", row["started_at"]),
              ("first user line", first), ("ended_at (completed)", row["ended_at"]),
              ("magic returned", returned), *_read_trace(trace_file)]
    return {"first": first - start if first else None, "completed": row["ended_at"] - start,
            "returned": returned - start, "events": events, "t0": start,
            "sigterm": sum(1 for n, _ in events if n == "SIGTERM to kernel <")}


# -- phases --------------------------------------------------------------------------------

# Milestones on the critical path of a %%train run, in the order they happen; a phase is the
# time between two consecutive milestones present in a run (the names are events above).
MILESTONES = [
    ("magic called", "notebook: parse flags, carry names, write job notebook, record run"),
    ("launch_detached <", "notebook: start the job process (Popen)"),
    ("launch_detached >", "job process: fork/exec until Python runs"),
    ("interpreter up", "job process: imports (jupyter_mlops, jobs package)"),
    ("workspace() <", "job process: open the workspace, read job.json, register"),
    ("claim <", "claim a slot"),
    ("claim >", None),
    ("execute <", "set status starting, prepare (before the kernel starts)"),
    ("start_kernel <", "launch the kernel process"),
    ("start_kernel >", "runner set-up while the kernel boots (imports...)"),
    ("kernel client <", "kernel boot until ready (kernel_info round trip)"),
    ("kernel client >", "cells before the user's (parameters, restore)"),
    ("first user line", "user cell until papermill returns"),
    ("papermill.execute_notebook >", "kill the kernel"),
    ("kill kernel >", "store files, environment, status"),
    ("ended_at (completed)", "notebook: poll delay until the magic returns"),
    ("magic returned", None),
]


def _phase_table(runs: list[dict[str, Any]]) -> list[tuple[str, str, list[float]]]:
    wanted = [m for m, _ in MILESTONES]
    labels = dict(MILESTONES)
    per_phase: dict[tuple[str, str], list[float]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for result in runs:
        stamps: dict[str, float] = {}
        for name, stamp in result["events"]:
            # the first occurrence of a start mark, the last of an end mark
            if name in wanted and stamp is not None and (name.endswith(">")
                                                         or name not in stamps):
                stamps[name] = stamp
        present = sorted((stamps[m], wanted.index(m), m) for m in wanted if m in stamps)
        for (t_a, _, a), (t_b, _, b) in itertools.pairwise(present):
            key = (a, b)
            if key not in order:
                order.append(key)
            per_phase[key].append(t_b - t_a)
    return [(labels.get(a) or f"{a} → {b}", f"{a} → {b}", per_phase[(a, b)]) for a, b in order]


def _concurrent(runs: list[dict[str, Any]], name: str) -> list[float]:
    """Durations of a wrapped function that runs beside the critical path (a thread)."""
    found = []
    for result in runs:
        begin = end = None
        for event, stamp in result["events"]:
            if event == name + " <":
                begin = stamp
            elif event == name + " >":
                end = stamp
        if begin is not None and end is not None:
            found.append(end - begin)
    return found


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--no-trace", action="store_true",
                        help="no job-process tracer (no phase breakdown)")
    args = parser.parse_args(argv)
    trace = not args.no_trace

    import ipykernel
    import jupyter_client
    import nbclient
    import papermill

    import jupyter_mlops
    import jupyter_mlops.compute.local as local_target
    from jupyter_mlops.compute.agent import AgentPaths, ping, request

    print(f"# %%train vs papermill vs a bare kernel — {platform.node()}, "
          f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# jupyter_mlops {Path(jupyter_mlops.__file__).parent}, papermill "
          f"{papermill.__version__}, nbclient {nbclient.__version__}, jupyter_client "
          f"{jupyter_client.__version__}, ipykernel {ipykernel.__version__}")
    print("# load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp, contextlib.ExitStack() as back:
        back.callback(os.chdir, home)  # leave the folder before it is deleted
        folder = Path(tmp)
        os.environ["JUPYTER_MLOPS_WORKSPACE"] = str(folder / "ws")
        os.environ["JUPYTER_MLOPS_WARM"] = "0"  # cold, except where warm_started() says
        for var in ("JUPYTER_MLOPS_DATABASE_URL", "JUPYTER_MLOPS_ARTIFACT_URL",
                    "JUPYTER_MLOPS_RUN_ID"):
            os.environ.pop(var, None)
        if trace:
            (folder / "tracer").mkdir()
            (folder / "tracer" / "sitecustomize.py").write_text(TRACER)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(folder / "tracer"), os.environ.get("PYTHONPATH")) if p)
        os.chdir(folder)
        nb = folder / "in.ipynb"
        _write_notebook(nb, CODE)

        from IPython.testing.globalipapp import get_ipython

        shell = get_ipython()
        shell.run_line_magic("load_ext", "jupyter_mlops")
        shell.run_cell("import jupyter_mlops as mlops")  # carried to the job as an import

        notebook_marks: list[tuple[str, float]] = []
        launch = local_target.spawn_detached

        def traced_launch(*a: Any, **k: Any) -> Any:
            notebook_marks.append(("launch_detached <", time.time()))
            try:
                return launch(*a, **k)
            finally:
                notebook_marks.append(("launch_detached >", time.time()))

        local_target.spawn_detached = traced_launch

        def warm_started(bench: Any) -> Any:
            os.environ["JUPYTER_MLOPS_WARM"] = "1"
            try:
                return bench()
            finally:
                os.environ["JUPYTER_MLOPS_WARM"] = "0"

        agent = AgentPaths.for_workspace(folder / "ws")
        back.callback(lambda: ping(agent) and request(agent.socket, {"op": "stop"}))

        # Count the kernels papermill in this process had to SIGTERM (see STALL).
        from jupyter_client.manager import AsyncKernelManager

        sigterms: list[float] = []
        send_sigterm = AsyncKernelManager._async_send_kernel_sigterm

        async def counted_sigterm(self: Any, *a: Any, **k: Any) -> Any:
            sigterms.append(time.time())
            return await send_sigterm(self, *a, **k)

        AsyncKernelManager._async_send_kernel_sigterm = counted_sigterm

        # The two warm contenders are apart, so that the agent has booted the next warm
        # process in between (one CPU slot: one warm process).
        contenders = {
            "kernel": lambda: bench_kernel(),
            "warm": lambda: warm_started(lambda: bench_train(shell, folder, CODE, False, [])),
            "pm_cli": lambda: bench_papermill_cli(folder, nb, trace),
            "pm_cli_fast": lambda: bench_papermill_cli(folder, nb, trace, no_stall=True),
            "warm_first": lambda: warm_started(lambda: bench_first_train(folder)),
            "warm_log": lambda: warm_started(
                lambda: bench_train(shell, folder, CODE_LOG, False, [])),
            "pm_inproc": lambda: bench_papermill_inproc(folder, nb, sigterms),
            "train": lambda: bench_train(shell, folder, CODE, trace, notebook_marks),
            "train_log": lambda: bench_train(shell, folder, CODE_LOG, trace, notebook_marks),
        }
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
        warm: dict[str, dict[str, Any]] = {}
        for rnd in range(args.reps + 1):
            print(f"  round {rnd}/{args.reps}{' (warm-up)' if rnd == 0 else ''}...",
                  file=sys.stderr, flush=True)
            for name, bench in contenders.items():
                result = bench()
                if rnd == 0:
                    warm[name] = result
                else:
                    results[name].append(result)
        local_target.spawn_detached = launch

    def col(name: str, key: str) -> list[float]:
        return [r[key] for r in results[name] if r.get(key) is not None]

    n = args.reps
    rows = [
        ("bare kernel: start_kernel + wait_for_ready", "kernel", "ready"),
        ("papermill CLI: to first user line", "pm_cli", "first"),
        ("papermill CLI: to process exit", "pm_cli", "total"),
        ("papermill CLI, rfc3987_syntax skipped: first line", "pm_cli_fast", "first"),
        ("papermill CLI, rfc3987_syntax skipped: exit", "pm_cli_fast", "total"),
        ("papermill in-process (warm): to first user line", "pm_inproc", "first"),
        ("papermill in-process (warm): to return", "pm_inproc", "total"),
        ("%%train --wait: to first user line", "train", "first"),
        ("%%train --wait: to run completed (ended_at)", "train", "completed"),
        ("%%train --wait: to magic returned", "train", "returned"),
        ("%%train + mlops.log: to first user line", "train_log", "first"),
        ("%%train + mlops.log: to run completed", "train_log", "completed"),
        ("%%train + mlops.log: to magic returned", "train_log", "returned"),
        ("warm %%train --wait: to first user line", "warm", "first"),
        ("warm %%train --wait: to run completed (ended_at)", "warm", "completed"),
        ("warm %%train --wait: to magic returned", "warm", "returned"),
        ("warm %%train + mlops.log: to first user line", "warm_log", "first"),
        ("warm %%train + mlops.log: to run completed", "warm_log", "completed"),
        ("warm %%train, a fresh kernel's first: to first line", "warm_first", "first_line"),
    ]
    print()
    print(f"{f'Times in seconds over {n} rounds (after 1 warm-up round)':<54}  median      max")
    for label, name, key in rows:
        print(f"  {label:<52}{_fmt(col(name, key))}")
    print(f"  (warm-up round: %%train completed {warm['train']['completed']:.3f}, "
          f"papermill CLI {warm['pm_cli']['total']:.3f}, kernel {warm['kernel']['ready']:.3f})")

    if trace:
        runs = results["train"]
        print()
        print(f"%%train phases (trivial cell; median and max over {n} runs; critical path)")
        total = 0.0
        for label, span, values in _phase_table(runs):
            total += statistics.median(values)
            print(f"  {label:<62} {_fmt(values)}   [{span}]")
        print(f"  {'sum of medians':<62} {total:7.3f}")
        env = _concurrent(runs, "capture_environment")
        if env:
            print(f"  beside it: capture_environment (a thread)                      "
                  f"{_fmt(env)}")
        imp = _concurrent(runs, "import papermill")
        if imp:
            print(f"  included above: import papermill in the job process            "
                  f"{_fmt(imp)}")
        pm_runs = [r for name in ("pm_cli", "pm_cli_fast", "pm_inproc")
                   for r in [*results[name], warm[name]]]
        stalls = sum(r["sigterm"] for r in pm_runs)
        slow = [r["total"] for r in pm_runs if r["sigterm"]]
        print()
        print(f"papermill (CLI and in-process): the kernel needed a SIGTERM after a 2.5 s wait "
              f"in {stalls} of {len(pm_runs)} runs"
              + (f" (those took {', '.join(f'{t:.2f}' for t in slow)} s)" if slow else ""))
        print(f"%%train: {sum(r['sigterm'] for r in runs)} of {len(runs)} (the job runner "
              "never asks its kernel to shut down: it kills it once the notebook is done)")
        print(STALL)

    med = statistics.median
    train_c, train_f = med(col("train", "completed")), med(col("train", "first"))
    cli_t, cli_f = med(col("pm_cli", "total")), med(col("pm_cli", "first"))
    fast_t = med(col("pm_cli_fast", "total"))
    inproc_t, kernel = med(col("pm_inproc", "total")), med(col("kernel", "ready"))

    def verdict(added: float) -> str:
        return f"(target: under +{TARGET_ADDED_S} s) {'PASS' if added < TARGET_ADDED_S else 'MISS'}"

    print()
    print("Differences and ratios (medians)")
    lines = [
        ("%%train first line - bare kernel ready", f"{train_f - kernel:+.3f} s"),
        ("%%train first line - papermill CLI first line", f"{train_f - cli_f:+.3f} s"),
        ("%%train completed - papermill in-process (warm)", f"{train_c - inproc_t:+.3f} s"),
        ("%%train completed / papermill CLI", f"{train_c / cli_t:.2f}x"),
        ("%%train completed - papermill CLI, rfc3987_syntax skipped",
         f"{train_c - fast_t:+.3f} s   {verdict(train_c - fast_t)}"),
        ("%%train completed - papermill CLI",
         f"{train_c - cli_t:+.3f} s   {verdict(train_c - cli_t)}"),
    ]
    warm_f, warm_c = med(col("warm", "first")), med(col("warm", "completed"))
    warm_log_f = med(col("warm_log", "first"))
    ratio = warm_f / kernel
    lines += [
        ("cold %%train first line / bare kernel ready", f"{train_f / kernel:.2f}x"),
        ("warm %%train first line / bare kernel ready",
         f"{ratio:.2f}x = {warm_f * 1000:.0f} ms   (target: <= {TARGET_WARM_RATIO}x) "
         f"{'PASS' if ratio <= TARGET_WARM_RATIO else 'MISS'}"),
        ("warm %%train + mlops.log first line / bare kernel ready", f"{warm_log_f / kernel:.2f}x"),
        ("warm %%train, a fresh kernel's first: first line / bare kernel ready",
         f"{med(col('warm_first', 'first_line')) / kernel:.2f}x"),
        ("warm / cold %%train: first line", f"{warm_f / train_f:.2f}x"),
        ("warm / cold %%train: completed", f"{warm_c / train_c:.2f}x"),
        ("warm %%train completed / papermill CLI", f"{warm_c / cli_t:.2f}x"),
    ]
    for label, value in lines:
        print(f"  {label:<58} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
