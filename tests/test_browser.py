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
import itertools
import math
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


def open_notebook(page: Any, lab: Lab, name: str = NOTEBOOK) -> None:
    page.goto(lab.url(f"lab/tree/{name}"))
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
                        lambda s: max(s["steps"] or [-1]) > max(first["steps"]), timeout=90)
            # The loss chart is drawn and redrawn while the run is running.
            drawn = widget.wait("the loss line drawn while running",
                                lambda s: s["word"] == "running" and s["d"], timeout=90)
            widget.wait("the loss line to change while running",
                        lambda s: s["word"] == "running" and s["d"] and s["d"] != drawn["d"],
                        timeout=90)
            screenshot(page, "browser-run-widget-running.png")

            end = widget.wait("status completed", lambda s: s["word"] == "completed",
                              timeout=60)
            # Functional wait again: the last poll may land just after the status row.
            end = widget.wait(f"'step {STEPS - 1}' in the log",
                              lambda s: STEPS - 1 in s["steps"], timeout=90)
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


SWEEP_NOTEBOOK = "sweep.ipynb"
SWEEP_TRIALS = 5
SWEEP_CELLS = [
    "%load_ext jupyter_mlops\nimport jupyter_mlops as mlops\n"
    "with mlops.start_run('warmup', experiment='sweep'):\n    mlops.log('x', 1.0)\n"
    "open('model.txt', 'w').write('weights')\n"
    "_ = mlops.workspace().models.register('demo-model', 'model.txt', tags={'stage': 'test'})",
    # Left open while nothing runs: the sweep's trials must appear in it without Refresh.
    "%mlops runs",
    f"%%sweep --param lr=loguniform(1e-4,1e-1) --param units=choice(16,32,64) "
    f"--metric accuracy --goal max --trials {SWEEP_TRIALS} --concurrency 2 --seed 7 "
    "--policy bandit(slack=0.02,interval=1,delay=1) --name browser-sweep\n"
    "import math, time\n"
    "quality = 1 - abs(math.log10(lr) + 2) / 3\n"
    "for step in range(6):\n"
    "    mlops.log('accuracy', quality * (step + 1) / 6, step=step)\n"
    "    if mlops.should_stop():\n"
    "        break\n"
    "    time.sleep(0.3)",
    "%mlops models",
]

AXES_JS = """(sel) => {
  const fig = document.querySelector(sel);
  if (!fig) return null;
  return Array.from(fig.querySelectorAll('g.axis')).map(axis => {
    const label = axis.querySelector('.axislabel');
    const ticks = Array.from(axis.querySelectorAll('.tick text')).map(t => {
      const r = t.getBoundingClientRect();
      return {text: t.textContent, left: r.left, right: r.right, top: r.top,
              bottom: r.bottom, cx: (r.left + r.right) / 2};
    });
    return {label: label ? label.textContent : '', ticks};
  });
}"""


@pytest.fixture
def sweep_lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "root"
    root.mkdir()
    make_notebook(root / SWEEP_NOTEBOOK, *SWEEP_CELLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_MLOPS_")}
    env["JUPYTER_MLOPS_WORKSPACE"] = str(tmp_path / "ws")
    with jupyter_lab(root, env) as server:
        yield server


def _visible_text(page: Any) -> str:
    return "\n".join(page.locator(".jp-OutputArea").all_inner_texts())


def _wait_for(page: Any, what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"waiting for {what}\ncell outputs:\n{outputs_text(page)}")


def _shot(page: Any, locator: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=str(ARTIFACTS / name))
    print(f"\nscreenshot: {ARTIFACTS / name}")


def _restart_kernels(lab: Lab) -> None:
    """Restart every kernel of the server (as Kernel > Restart does), through its REST API."""
    import json
    import urllib.request

    with urllib.request.urlopen(lab.url("api/kernels"), timeout=30) as response:
        kernels = json.loads(response.read())
    assert kernels, "no kernel to restart"
    for kernel in kernels:
        request = urllib.request.Request(lab.url(f"api/kernels/{kernel['id']}/restart"),
                                         data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200


def test_sweep_runs_table_and_models_views_live_then_static(sweep_lab: Lab) -> None:
    import json

    console: list[str] = []
    with chromium_page(viewport={"width": 1400, "height": 1100}) as page:
        page.on("console", lambda msg: console.append(msg.text))
        try:
            open_notebook(page, sweep_lab, SWEEP_NOTEBOOK)
            run_all_cells(page)
            sweep = page.locator(".mlops-sweep-widget")
            sweep.wait_for(timeout=90_000)
            table = page.locator(".mlops-runs-widget")
            models = page.locator(".mlops-table-widget")
            models.wait_for(timeout=60_000)
            assert "demo-model" in models.inner_text()

            # While the sweep runs: the "why trials wait" line (one CPU slot, concurrency 2).
            waiting = _wait_for(page, "the line saying why trials wait", lambda: (
                "one trial at a time" in sweep.locator(".mlops-sweep-waiting").inner_text()
                and sweep.locator(".mlops-sweep-waiting").inner_text()), timeout=60)
            assert "--concurrency 2" in waiting
            _wait_for(page, "a trial's line in the overlay", lambda: sweep.locator(
                ".mlops-sweep-overlay path.line").count() >= 1, timeout=90)
            _shot(page, sweep, "browser-sweep-running.png")

            status = sweep.locator(".mlops-sweep-status")
            _wait_for(page, "the sweep to complete", lambda: "completed" in status.inner_text(),
                      timeout=240)
            board = sweep.locator(".mlops-sweep-leaderboard")
            _wait_for(page, "every trial in the leaderboard", lambda: board.locator(
                "tbody tr").count() == SWEEP_TRIALS, timeout=90)
            text = board.inner_text()
            assert "pruned" in text and "it stopped after step" in text, text

            # The parameter axis of a loguniform parameter: log scale, readable ticks.
            axes = page.evaluate(AXES_JS, ".mlops-sweep-chart-lr")
            lr_axis = next(a for a in axes if a["label"] == "lr")
            ticks = [t for t in lr_axis["ticks"] if t["text"]]
            assert len(ticks) >= 3, lr_axis
            values = [float(t["text"]) for t in ticks]
            assert values == sorted(values) and all(
                math.isclose(b / a, 10) for a, b in itertools.pairwise(values)), values
            gaps = [b["cx"] - a["cx"] for a, b in itertools.pairwise(ticks)]
            assert max(gaps) - min(gaps) < 2, f"not a log axis: powers of ten at {gaps}"
            for a, b in itertools.pairwise(ticks):
                assert a["right"] <= b["left"], f"tick labels overlap: {a} {b}"
            units = next(a for a in page.evaluate(AXES_JS, ".mlops-sweep-chart-units")
                         if a["label"] == "units")
            assert [t["text"] for t in units["ticks"]] == ["16", "32", "64"], units
            assert not [m for m in console if "invalid format" in m], console

            # One line per trial in the overlay chart.
            _wait_for(page, "one overlay line per trial", lambda: sweep.locator(
                ".mlops-sweep-overlay path.line").count() == SWEEP_TRIALS, timeout=30)

            # Sorting a leaderboard column.
            sweep.locator(".mlops-sweep-sort select").select_option("lr")
            sweep.locator(".mlops-sweep-order").get_by_text("desc").click()

            def lr_column() -> list[float] | None:
                # Header and rows read in one script, so both come from the same redraw.
                table = board.evaluate("""(el) => ({
                    head: Array.from(el.querySelectorAll('th')).map(c => c.innerText),
                    rows: Array.from(el.querySelectorAll('tbody tr')).map(
                        r => Array.from(r.querySelectorAll('td')).map(c => c.innerText))})""")
                head = [c.strip() for c in table["head"]]
                if "lr ↓" not in head:
                    return None
                column = head.index("lr ↓")
                return [float(row[column]) for row in table["rows"]]

            ordered = _wait_for(page, "the leaderboard sorted by lr", lr_column, timeout=90)
            assert ordered == sorted(ordered, reverse=True), ordered
            sweep.locator(".mlops-sweep-sort select").select_option("rank")
            sweep.locator(".mlops-sweep-order").get_by_text("asc").click()
            _wait_for(page, "the leaderboard by rank", lambda: "# ↑" in board.locator(
                "thead").inner_text(), timeout=90)
            _shot(page, sweep, "browser-sweep-completed.png")

            # The runs table, left open since before the sweep, lists its trials.
            _wait_for(page, "the sweep's trials in the runs table", lambda: table.locator(
                "tbody tr").count() >= SWEEP_TRIALS + 1, timeout=90)
            assert "Refresh" in table.inner_text()
            # The table polls every 2 s: wait until it shows the last trial's ending too (its
            # static form is updated in the same poll), so the saved notebook holds that.
            _wait_for(page, "no run still running in the runs table", lambda: table.locator(
                "tbody tr").filter(has_text="running").count() == 0, timeout=90)
            _shot(page, table, "browser-runs-table.png")
            _shot(page, page.locator(".mlops-table-widget").first, "browser-models.png")

            # Saved right after the end: the notebook holds every view's final state.
            saved = sweep_lab.root / SWEEP_NOTEBOOK

            def saved_statics() -> list[str]:
                cells = json.loads(saved.read_text())["cells"]
                return ["".join(o["data"]["text/html"]) for c in cells
                        for o in c.get("outputs", [])
                        if "mlops-static" in "".join(o.get("data", {}).get("text/html", ""))]

            def saved_final() -> bool:
                # Save until the file holds the views' final states: the runs table's static
                # form follows its live form by one message.
                page.keyboard.press("Control+s")
                page.wait_for_timeout(500)
                statics = saved_statics()
                return any("mlops-sweep-static" in s for s in statics) and all(
                    ">running<" not in s for s in statics if "mlops-runs" in s)

            _wait_for(page, "the notebook saved with every view's final state", saved_final,
                      timeout=60)
            statics = saved_statics()
            sweep_static = next(s for s in statics if "mlops-sweep-static" in s)
            assert "completed" in sweep_static and ">queued<" not in sweep_static
            assert sweep_static.count("<tr") == SWEEP_TRIALS + 1
            assert "demo-model" in "".join(statics)

            # Restart the kernel, reload: no "Error displaying widget", the static views show.
            _restart_kernels(sweep_lab)
            page.reload()
            open_notebook(page, sweep_lab, SWEEP_NOTEBOOK)
            page.locator(".mlops-sweep-static").first.wait_for(state="visible",
                                                               timeout=60_000)
            for css in (".mlops-sweep-static", ".mlops-runs", ".mlops-models-table"):
                _wait_for(page, f"{css} visible after the restart", lambda css=css: page.locator(
                    f".mlops-static {css}").first.is_visible(), timeout=90)
            page.wait_for_timeout(1000)  # let the widget manager finish its (failed) lookups
            visible = _visible_text(page)
            assert "Error displaying widget" not in visible and "Loading widget" not in visible
            runs_static = next(s for s in statics if "mlops-runs" in s)
            assert ">running<" not in runs_static, "the runs table's static form is stale"
            page.locator(".mlops-sweep-static").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-after-restart.png"))
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(ARTIFACTS / "browser-sweep-failure.png"))
            print(f"console: {console[-20:]}\njupyter lab log (tail):\n{sweep_lab.log_tail()}")
            raise
