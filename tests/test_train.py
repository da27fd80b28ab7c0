"""``%%train`` and ``%mlops`` through a real IPython shell, with real job processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import jupyter_mlops as mlops
from .conftest import wait_until


@pytest.fixture
def ip(ws_dir: Path):
    """The test IPython shell with the extension loaded and a clean namespace."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    saved = dict(shell.user_ns)
    yield shell
    shell.user_ns.clear()
    shell.user_ns.update(saved)


def run_ok(shell, code: str) -> None:
    result = shell.run_cell(code, store_history=True)
    result.raise_error()


def test_train_carries_imports_functions_and_data(ip, ws) -> None:
    run_ok(ip, "import numpy as np\nimport jupyter_mlops as mlops\n"
               "def scale(x, k):\n    return x * k\n"
               "data = np.arange(10, dtype=float)\nunused = open(__file__ if '__file__' in dir() else '/dev/null')")
    run = ip.run_cell_magic(
        "train", "--name carry --experiment t --wait -p k=3 --outputs total,doubled --tag team=ml",
        "doubled = scale(data, k)\n"
        "total = float(doubled.sum())\n"
        "for step, v in enumerate(doubled):\n"
        "    mlops.log('value', v, step=step)\n"
        "np.save(mlops.outputs_dir() / 'doubled.npy', doubled)\n"
        "print('total is', total)",
    )
    assert run.status == "completed"
    assert ip.user_ns["_run"] == run
    assert ip.user_ns["total"] == 135.0
    assert list(ip.user_ns["doubled"]) == [3.0 * i for i in range(10)]
    assert run.params == {"k": 3} and run.tags == {"team": "ml"}
    assert run.metrics() == {"value": 27.0}
    assert "total is 135.0" in run.logs()
    paths = {a["path"] for a in run.artifacts()}
    assert {"outputs/doubled.npy", "notebook.ipynb", "history.py", "returned/total.pkl",
            "returned/doubled.pkl"} <= paths
    assert run.info()["kind"] == "cell"
    # The job notebook (the run's snapshot) restores modules as imports, the rest by value.
    import json

    executed = json.loads(run.workspace.artifacts.open(run.id, "notebook.ipynb").read())
    restore = next(c for c in executed["cells"] if "mlops-restore" in c["metadata"].get("tags", []))
    source = "".join(restore["source"])
    assert "import numpy as np" in source and "import jupyter_mlops as mlops" in source
    assert "'data'" in source and "'scale'" in source and "unused" not in source
    history = run.workspace.artifacts.open(run.id, "history.py").read().decode()
    assert "def scale(x, k)" in history


def test_train_returns_at_once_and_outputs_arrive_later(ip, ws, tmp_path) -> None:
    flag = tmp_path / "go"
    ip.user_ns["flag"] = str(flag)
    start = time.monotonic()
    run = ip.run_cell_magic("train", "--outputs answer",
                            "import time, pathlib\n"
                            "while not pathlib.Path(flag).exists():\n    time.sleep(0.05)\n"
                            "answer = 42")
    assert time.monotonic() - start < 10  # the notebook is free while the job waits
    assert run.status in ("queued", "starting", "running")
    assert "answer" not in ip.user_ns
    flag.touch()
    wait_until(lambda: ip.user_ns.get("answer") == 42, what="the output to come back")


def test_failing_cell_raises_with_wait_and_keeps_partial_results(ip, ws) -> None:
    run_ok(ip, "import jupyter_mlops as mlops")
    with pytest.raises(mlops.RunFailed, match="KeyError: 'missing'"):
        ip.run_cell_magic("train", "--wait --name boom",
                          "mlops.log('seen', 1.0)\n"
                          "(mlops.outputs_dir() / 'partial.txt').write_text('kept')\n"
                          "{}['missing']")
    run = ws.get_run("boom")
    assert run.status == "failed" and "KeyError" in run.error
    assert run.metrics() == {"seen": 1.0}
    assert "outputs/partial.txt" in {a["path"] for a in run.artifacts()}


def test_cancel_stops_the_job_and_keeps_what_it_wrote(ip, ws) -> None:
    run_ok(ip, "import jupyter_mlops as mlops")
    run = ip.run_cell_magic("train", "--name cancel-me",
                            "import time\nmlops.log('started', 1.0)\nprint('going')\n"
                            "(mlops.outputs_dir() / 'ckpt.txt').write_text('1')\n"
                            "time.sleep(300)")
    wait_until(lambda: "going" in run.logs(), what="the job to start")
    ip.run_line_magic("mlops", f"cancel {run.id}")
    wait_until(lambda: run.status == "canceled", timeout=30, what="the run to be canceled")
    assert run.metrics() == {"started": 1.0}
    assert "outputs/ckpt.txt" in {a["path"] for a in run.artifacts()}
    assert "going" in run.logs()
    pid = run.info()["pid"]
    wait_until(lambda: not _alive(pid), timeout=60, what="the job process to exit")
    kernel_pid = (run.info()["resources"] or {}).get("kernel_pid")
    assert kernel_pid and not _alive(kernel_pid)


def test_timeout_fails_the_run(ip, ws) -> None:
    with pytest.raises(mlops.RunFailed, match="timed out after 1.5 s"):
        ip.run_cell_magic("train", "--wait --timeout 1.5 --name slow",
                          "import time\ntime.sleep(300)")
    assert ws.get_run("slow").status == "failed"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_job_is_lost_and_its_slot_is_freed(ip, ws) -> None:
    first = ip.run_cell_magic("train", "--name victim", "import time\nprint('up')\ntime.sleep(300)")
    wait_until(lambda: "up" in first.logs(), what="the first job to run")
    # One CPU slot: the next job waits in the queue behind the first.
    second = ip.run_cell_magic("train", "--name next", "print('second ran')")
    time.sleep(1.0)
    assert second.status == "queued"
    os.kill(first.info()["pid"], signal.SIGKILL)
    wait_until(lambda: first.status == "lost", timeout=30, what="the killed run to be lost")
    assert "died" in first.error
    second.wait(timeout=60)
    assert "second ran" in second.logs()


def test_bad_flags_and_unsendable_names_submit_nothing(ip, ws) -> None:
    import threading as _threading

    ip.user_ns.update(lock=_threading.Lock(), handle=open(os.devnull),
                      gen=(i for i in range(3)))
    cases = [
        ("--frobnicate", "x = 1", "unrecognized arguments: --frobnicate"),
        ("-p lr", "x = lr", "-p takes name=value"),
        ("-p 1x=2", "x = 1", "-p takes name=value"),
        ("--outputs not-a-name", "x = 1", "--outputs takes variable names"),
        ("--outputs never", "x = 1", "'never', which the cell never assigns"),
        ("--timeout 0", "x = 1", "--timeout must be a positive"),
        ("--gpus 1", "x = 1", "no GPUs"),
        ("", "x = (", "syntax error"),
        ("", "with lock:\n    print(handle.read(), next(gen))", "cannot be carried"),
    ]
    for line, cell, message in cases:
        with pytest.raises(UsageError) as info:
            ip.run_cell_magic("train", line, cell)
        assert message in str(info.value), (line, str(info.value))
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("train", "", "with lock:\n    print(handle.read(), next(gen))")
    text = str(info.value)
    assert "lock: a lock" in text and "handle: an open file" in text and "gen: a generator" in text
    assert ws.runs() == []
    assert not list((ws.location.directory / "staging").glob("*/carried"))


def test_carried_data_over_the_limit_is_refused_with_sizes(ip, ws) -> None:
    import numpy as np

    from jupyter_mlops.magics import TrainConfig

    ip.user_ns.update(big=np.zeros(300_000), small=np.zeros(10))
    ip.config.TrainConfig.max_carry_bytes = 1_000_000
    try:
        assert TrainConfig(parent=ip).max_carry_bytes == 1_000_000
        with pytest.raises(UsageError) as info:
            ip.run_cell_magic("train", "", "print(big.sum() + small.sum())")
    finally:
        del ip.config.TrainConfig["max_carry_bytes"]
    text = str(info.value)
    assert "over the 976.6 KiB limit" in text and "big: over" in text
    assert ws.runs() == []


def test_mlops_line_magic_views(ip, ws, capsys) -> None:
    run = ip.run_cell_magic("train", "--wait --name viewed", "print('hi')")
    capsys.readouterr()
    frame = ip.run_line_magic("mlops", "runs")
    assert list(frame["name"]) == ["viewed"]
    ip.run_line_magic("mlops", f"show {run.id}")
    shown = capsys.readouterr().out
    assert "completed" in shown and "history.py" in shown
    ip.run_line_magic("mlops", "targets")
    assert "cpu:0" in capsys.readouterr().out
    with pytest.raises(UsageError, match="usage: %mlops"):
        ip.run_line_magic("mlops", "frobnicate")
    with pytest.raises(UsageError, match="no run matches"):
        ip.run_line_magic("mlops", "show nope")


def test_two_simulated_gpus_three_jobs(ip, ws, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "0,1")
    flag = tmp_path / "release"
    ip.user_ns["flag"] = str(flag)
    cell = ("import os, time, pathlib\n"
            "print('CUDA', os.environ['CUDA_VISIBLE_DEVICES'])\n"
            "while not pathlib.Path(flag).exists():\n    time.sleep(0.05)")
    runs = [ip.run_cell_magic("train", f"--gpus 1 --name gpu{i}", cell) for i in range(3)]
    wait_until(lambda: all("CUDA" in r.logs() for r in runs[:2]), what="two jobs on GPUs")
    time.sleep(1.0)
    assert runs[2].status == "queued"  # both GPUs are taken
    with pytest.raises(UsageError, match="more GPUs than target 'local' has"):
        ip.run_cell_magic("train", "--gpus 3", "pass")
    flag.touch()
    for run in runs:
        run.wait(timeout=90)
    devices = [r.logs().split("CUDA ")[1].strip() for r in runs]
    assert sorted(devices[:2]) == ["0", "1"] and devices[2] in ("0", "1")
    assert [r.info()["resources"]["cuda_visible_devices"] for r in runs] == devices


def test_job_survives_the_notebook_kernel(ws_dir: Path, tmp_path: Path) -> None:
    """A real notebook kernel submits a job and is shut down; the job still completes."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3",
                              env={**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(ws_dir)},
                              cwd=str(tmp_path))
    try:
        kc.execute_interactive("%load_ext jupyter_mlops", timeout=60)
        reply = kc.execute_interactive(
            "%%train --name survivor\nimport time\ntime.sleep(3)\nprint('finished')",
            timeout=60, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
    finally:
        km.shutdown_kernel(now=True)
        kc.stop_channels()
    run = mlops.workspace().get_run("survivor")
    assert run.status in ("queued", "starting", "running")
    run.wait(timeout=90)
    assert "finished" in run.logs()


def test_interrupting_a_waiting_cell_detaches(ip, ws, capsys) -> None:
    """Ctrl-C (SIGINT in the kernel) while ``--wait`` blocks: the job goes on."""
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        run = ip.run_cell_magic("train", "--wait --name detached",
                                "import time\nprint('working')\ntime.sleep(300)")
    finally:
        timer.cancel()
    assert "detached from run" in capsys.readouterr().out
    assert run.status in ("queued", "starting", "running")
    run.cancel()
    wait_until(lambda: run.status == "canceled", timeout=30, what="the cancel")


def test_status_display_says_where_and_how_to_follow(ip, ws, capsys) -> None:
    run = ip.run_cell_magic("train", "--name shown", "import time\ntime.sleep(300)")
    wait_until(lambda: run.status == "running", what="the job to run")
    capsys.readouterr()
    ip.display_formatter.format(run)  # a terminal shell has no widgets: the summary prints
    text = capsys.readouterr().out
    assert "on local [cpu:0]" in text
    assert f"%mlops attach {run.id}" in text
    assert f"%mlops cancel {run.id}" in run._repr_html_()
    run.cancel()
    wait_until(lambda: run.status == "canceled", timeout=30, what="the cancel")


def test_a_first_train_and_sweep_in_a_kernel_do_not_import_nbformat(ws_dir: Path) -> None:
    """nbformat (with jsonschema's format checkers) takes most of a second to import: the
    notebooks of a cell's run and of a cell's sweep are written as plain JSON, so a kernel's
    first %%train is not held up by it. What is written is a valid nbformat 4.5 notebook."""
    import subprocess
    import sys
    import textwrap

    import nbformat

    script = textwrap.dedent("""\
        import sys
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "jupyter_mlops")
        shell.run_cell("x = 21").raise_error()
        shell.run_cell("%%train --wait --name first\\nprint('answer', x * 2)").raise_error()
        import jupyter_mlops as mlops
        sweep = mlops.workspace().sweep("import jupyter_mlops as mlops\\nmlops.log('s', y)",
            params={"y": "randint(0, 9)"}, metric="s", goal="max", trials=2,
            concurrency=2, namespace={})
        sweep.wait(timeout=120)
        print("imported", "nbformat" in sys.modules, "jsonschema" in sys.modules)
        print("trials", sorted(t["status"] for t in sweep.trial_rows()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=ws_dir.parent)
    assert done.returncode == 0, done.stderr
    assert "imported False False" in done.stdout, done.stdout
    assert "trials ['completed', 'completed']" in done.stdout, done.stdout
    run = next(
        r for r in mlops.workspace().runs() if r.info()["name"] == "first")
    assert run.status == "completed" and "answer 42" in run.logs()
    with run.workspace.backend.artifacts.open(run.id, "job/input.ipynb") as handle:
        notebook = nbformat.reads(handle.read().decode(), as_version=4)
    nbformat.validate(notebook)  # raises if invalid
    assert notebook.nbformat_minor == 5 and all(len(c.id) == 8 for c in notebook.cells)
    assert "parameters" in notebook.cells[1].metadata.tags
