"""A kernel that dies before it answers (it ran none of the user's code) is replaced, and
the run goes on; one that keeps dying ends the run ``failed`` with the reason.

The kernel is a real ipykernel behind a kernelspec whose launcher exits at once for its
first ``DIE`` starts (counted in a file), as a kernel does that loses a port race.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

LAUNCHER = """
import pathlib, runpy, sys
count = pathlib.Path({count!r})
starts = int(count.read_text() or 0) + 1 if count.exists() else 1
count.write_text(str(starts))
if starts <= {die}:
    sys.exit(1)  # dies before replying to kernel_info
sys.argv = ["ipykernel_launcher", *sys.argv[1:]]
runpy.run_module("ipykernel_launcher", run_name="__main__")
"""


def _flaky_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, die: int) -> Path:
    count = tmp_path / "starts"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER.format(count=str(count), die=die))
    spec_dir = tmp_path / "jupyter" / "kernels" / "flaky"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(launcher), "-f", "{connection_file}"],
        "display_name": "flaky", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # the job inherits it
    return count


def test_a_kernel_dying_before_it_answers_is_replaced(ws, tmp_path, monkeypatch) -> None:
    count = _flaky_kernel(tmp_path, monkeypatch, die=1)
    run = ws.submit("import jupyter_mlops as mlops\nmlops.log('x', 1.0)\nprint('ran')",
                    namespace={}, name="flaky-start", kernel="flaky")
    run.wait(timeout=180)
    assert run.status == "completed", run.error
    assert count.read_text() == "2"
    log = run.logs()
    assert "the kernel died while starting" in log and "ran" in log
    assert run.metrics()["x"] == 1.0


def test_a_kernel_that_keeps_dying_fails_the_run_with_the_reason(ws, tmp_path,
                                                                 monkeypatch) -> None:
    count = _flaky_kernel(tmp_path, monkeypatch, die=99)
    run = ws.submit("print('never')", namespace={}, name="never-starts", kernel="flaky")
    run.wait(timeout=180, raise_on_failure=False)
    assert run.status == "failed"
    assert "Kernel died before replying to kernel_info" in run.error
    assert count.read_text() == "3"
