"""What a person sees: a ``%%train`` cell's live RunWidget in JupyterLab, in a real browser.

A real ``jupyter lab`` serves a notebook from a temp folder; headless Chromium (Debian's, driven
by Playwright) opens it and runs all cells. The run logs ``loss`` 60 times over ~15 s while the
test watches the widget's log pane and chart change, then waits for ``completed``. Every wait
is functional (poll until it happens, with a generous bound); nothing asserts on speed.

Screenshots go to ``test-artifacts/`` at the repo root (mid-run, end, and one on failure).
Chromium missing is a failure, not a skip: CI installs it (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser._lab import Lab, chromium_page, jupyter_lab
from .conftest import make_notebook

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
NOTEBOOK = "browser.ipynb"
STEPS = 60

TRAIN_CELL = f"""%%train --name browser
import time
for step in range({STEPS}):
    mlops.log("loss", 1 / (step + 1), step=step)
    print(f"step {{step}}")
    time.sleep(0.25)
"""

STATUS_WORD = re.compile(
    r"\b(queued|starting|running|completed|failed|canceled|pruned|lost)\b")
STEP_LINE = re.compile(r"^step (\d+)$", re.MULTILINE)

# One consistent look at the widget per call: status, log, metrics and the loss line together.
SNAPSHOT_JS = """() => {
  const root = document.querySelector('.mlops-run-widget');
  if (!root) return null;
  const text = (sel) => { const e = root.querySelector(sel); return e ? e.innerText : null; };
  const line = root.querySelector('.mlops-chart-loss path.line');
  return {
    status: text('.mlops-run-status'),
    log: text('.mlops-run-log'),
    metrics: text('.mlops-run-metrics'),
    d: line ? line.getAttribute('d') : null,
  };
}"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """``jupyter lab`` serving a temp folder, its kernels writing to ``<tmp>/ws``."""
    root = tmp_path / "root"
    root.mkdir()
    make_notebook(root / NOTEBOOK, "%load_ext jupyter_mlops", "import jupyter_mlops as mlops",
                  TRAIN_CELL)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JUPYTER_MLOPS_")}  # no run id, headless flag, other store
    env["JUPYTER_MLOPS_WORKSPACE"] = str(tmp_path / "ws")
    with jupyter_lab(root, env) as server:
        yield server


class Widget:
    """Reads the run widget on a page and waits for states of it."""

    def __init__(self, page: Any):
        self.page = page
        self.last: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any] | None:
        snap = self.page.evaluate(SNAPSHOT_JS)
        if snap is not None:
            match = STATUS_WORD.search(snap["status"] or "")
            snap["word"] = match.group(1) if match else None
            snap["steps"] = [int(n) for n in STEP_LINE.findall(snap["log"] or "")]
            self.last = snap
        return snap

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if snap is not None and predicate(snap):
                return snap
            if snap is not None and snap["word"] in ("failed", "canceled", "lost"):
                break
            self.page.wait_for_timeout(100)
        raise AssertionError(f"waiting for {what}: the widget shows {self.describe()}\n"
                             f"cell outputs:\n{outputs_text(self.page)}")

    def describe(self) -> str:
        if self.last is None:
            return "nothing (no .mlops-run-widget on the page)"
        log = (self.last["log"] or "").splitlines()
        return (f"status {self.last['status']!r}, last log lines {log[-3:]}, "
                f"metrics {self.last['metrics']!r}, loss path d {(self.last['d'] or '')[:60]!r}")


def outputs_text(page: Any) -> str:
    return "\n---\n".join(page.locator(".jp-OutputArea").all_inner_texts())[-3000:]


def open_notebook(page: Any, lab: Lab) -> None:
    page.goto(lab.url(f"lab/tree/{NOTEBOOK}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The toolbar's execution indicator says "idle" before any kernel is connected; the status
    # bar says "<kernel name> | Idle" only once it is (running earlier opens "Select Kernel").
    page.locator("#jp-main-statusbar").get_by_text(
        re.compile(r"^(?!No Kernel).+ \| Idle$")).wait_for(timeout=60_000)


def run_all_cells(page: Any) -> None:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    widget = page.locator(".mlops-run-widget")
    if widget.count():
        widget.first.scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    print(f"\nscreenshot: {path}")
    return path


def test_train_cell_shows_a_live_run_widget(lab: Lab) -> None:
    with chromium_page() as page:
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        try:
            open_notebook(page, lab)
            run_all_cells(page)
            widget = Widget(page)

            widget.wait("the run widget", lambda s: True, timeout=60)
            # The log pane follows the job: a "step N" line, later a larger N.
            first = widget.wait("a 'step N' line in the log",
                                lambda s: s["word"] == "running" and s["steps"], timeout=60)
            widget.wait(f"a log line after 'step {max(first['steps'])}'",
                        lambda s: max(s["steps"] or [-1]) > max(first["steps"]), timeout=30)
            # The loss chart is drawn and redrawn while the run is running.
            drawn = widget.wait("the loss line drawn while running",
                                lambda s: s["word"] == "running" and s["d"], timeout=30)
            widget.wait("the loss line to change while running",
                        lambda s: s["word"] == "running" and s["d"] and s["d"] != drawn["d"],
                        timeout=30)
            screenshot(page, "browser-run-widget-running.png")

            end = widget.wait("status completed", lambda s: s["word"] == "completed",
                              timeout=60)
            # Functional wait again: the last poll may land just after the status row.
            end = widget.wait(f"'step {STEPS - 1}' in the log",
                              lambda s: STEPS - 1 in s["steps"], timeout=10)
            assert "loss" in (end["metrics"] or ""), end["metrics"]
            assert end["d"], "the loss chart has no line at the end"
            screenshot(page, "browser-run-widget-completed.png")
        except BaseException:
            with contextlib.suppress(Exception):  # never hide the real failure
                screenshot(page, "browser-run-widget-failure.png")
            print(f"page errors: {page_errors}\njupyter lab log (tail):\n{lab.log_tail()}")
            raise


ENDPOINT_NOTEBOOK = "endpoint.ipynb"
ENDPOINT_CELLS = [
    "%load_ext jupyter_mlops",
    "import joblib\nimport jupyter_mlops as mlops\n"
    "from sklearn.datasets import load_digits\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "X, y = load_digits(return_X_y=True)\n"
    "joblib.dump(LogisticRegression(max_iter=200).fit(X, y), 'digits.joblib')\n"
    "mlops.workspace().models.register('digits', 'digits.joblib')",
    "%deploy digits --name browser-ep",
    "answers = [_endpoint.score({'data': X[i:i + 2].tolist()}) for i in range(6)]\n"
    "print('answers', answers)",
]


@pytest.fixture
def endpoint_lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "root"
    root.mkdir()
    make_notebook(root / ENDPOINT_NOTEBOOK, *ENDPOINT_CELLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_MLOPS_")}
    env["JUPYTER_MLOPS_WORKSPACE"] = str(tmp_path / "ws")
    with jupyter_lab(root, env) as server:
        yield server
    import jupyter_mlops as mlops

    for endpoint in mlops.workspace(tmp_path / "ws").endpoints():
        endpoint.delete()


def test_deploy_shows_a_live_endpoint_widget(endpoint_lab: Lab) -> None:
    with chromium_page() as page:
        try:
            page.goto(endpoint_lab.url(f"lab/tree/{ENDPOINT_NOTEBOOK}"))
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.locator("#jp-main-statusbar").get_by_text(
                re.compile(r"^(?!No Kernel).+ \| Idle$")).wait_for(timeout=60_000)
            run_all_cells(page)
            widget = page.locator(".mlops-endpoint-widget")
            widget.wait_for(timeout=120_000)
            deadline = time.monotonic() + 90
            text = ""
            while time.monotonic() < deadline:
                text = widget.inner_text()
                found = re.search(r"requests\s*(\d+)", text)
                if "ready" in text and found and int(found.group(1)) >= 6:
                    break
                page.wait_for_timeout(200)
            else:
                raise AssertionError(f"the widget never showed 6 requests: {text!r}\n"
                                     f"{outputs_text(page)}")
            for part in ("browser-ep", "digits:1", "/score", "latency p50", "latency p99",
                         "endpoint: ready at"):
                assert part in text, part
            assert "Error displaying widget" not in outputs_text(page)
            assert "answers [[0, 1]" in outputs_text(page)
            ARTIFACTS.mkdir(exist_ok=True)
            widget.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-endpoint-widget.png"))
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(ARTIFACTS / "browser-endpoint-widget-failure.png"))
            print(f"jupyter lab log (tail):\n{endpoint_lab.log_tail()}")
            raise
