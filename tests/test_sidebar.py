"""The JupyterLab sidebar (``labextension/``) in a real JupyterLab and a real browser.

A real ``jupyter lab`` serves a seeded workspace; headless Chromium (Debian's, driven by
Playwright) opens the panel, watches a run started from a notebook turn completed without a
reload, opens a run view and a comparison, checks that a run's name is shown as text, and
switches to the dark theme. A second lab holds 10,000 runs: the time from clicking the panel's
tab to its first rows is measured and printed (not asserted: CI is 2 shared cores).

The extension is served from this checkout's build (``jupyter_mlops/labextension``, made by
``jlpm build`` or the pip build hook) through ``JUPYTER_PATH``, so the test sees the code
under test even when another copy is installed. Screenshots go to ``test-artifacts/sidebar-*``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser._lab import Lab, chromium_page, jupyter_lab
from .conftest import make_notebook

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "jupyter_mlops" / "labextension"
ARTIFACTS = ROOT / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"
NOTEBOOK = "live.ipynb"
LIVE_CELL = """%%train --name sidebar-live --experiment live
import time
for step in range(12):
    mlops.log("loss", 1 / (step + 1), step=step)
    print(f"line {step}")
    time.sleep(0.4)
"""
SWEEP_CELL = """%%sweep --param lr=loguniform(1e-4,1e-1) --param units=choice(16,32,64) \
--metric accuracy --goal max --trials 3 --concurrency 1 --seed 7 --policy none \
--name sidebar-sweep
import math
quality = 1 - abs(math.log10(lr) + 2) / 3
for step in range(3):
    mlops.log("accuracy", quality * (step + 1) / 3, step=step)
"""
TAB = '.jp-SideBar .lm-TabBar-tab[data-id="jupyter-mlops-sidebar"]'
PANEL = "#jupyter-mlops-sidebar"


def _built() -> None:
    if not (BUILD / "static" / "style.js").exists():
        pytest.fail(f"the sidebar is not built ({BUILD} is missing): run `jlpm install && "
                    "jlpm build` in labextension/, or `pip install -e .`", pytrace=False)


def _lab_env(tmp_path: Path) -> dict[str, str]:
    """Kernels and server on ``<tmp>/ws``; this checkout's sidebar first on JUPYTER_PATH."""
    _built()
    data = tmp_path / "jupyter-data"
    (data / "labextensions").mkdir(parents=True)
    (data / "labextensions" / "jupyter-mlops").symlink_to(BUILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_MLOPS_")}
    env["JUPYTER_MLOPS_WORKSPACE"] = str(tmp_path / "ws")
    env["JUPYTER_PATH"] = os.pathsep.join(
        [str(data), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _seed(ws: Any, folder: Path) -> None:
    """Two comparable runs with metrics, a run named like HTML, a model and a dataset."""
    import jupyter_mlops as mlops

    for name, lr in (("seed-a", 0.1), ("seed-b", 0.01)):
        with mlops.start_run(name, experiment="seeded", tags={"team": "vision"}):
            mlops.log_params({"lr": lr, "epochs": 5})
            for step in range(5):
                mlops.log("accuracy", 0.5 + step * lr, step=step)
    with mlops.start_run(XSS, experiment="seeded"):
        mlops.log("accuracy", 0.1)
    (folder / "model.txt").write_text("weights")
    ws.models.register("seed-model", str(folder / "model.txt"), tags={"stage": "test"})
    (folder / "pets.csv").write_text("a,b\n1,2\n3,4\n")
    ws.datasets.register("pets", str(folder / "pets.csv"))


@pytest.fixture
def lab(tmp_path: Path, ws: Any) -> Iterator[Lab]:
    """``jupyter lab`` over the seeded workspace ``<tmp>/ws`` (the ``ws`` fixture's)."""
    root = tmp_path / "root"
    root.mkdir()
    make_notebook(root / NOTEBOOK, "%load_ext jupyter_mlops\nimport jupyter_mlops as mlops",
                  LIVE_CELL, SWEEP_CELL)
    _seed(ws, tmp_path)
    with jupyter_lab(root, _lab_env(tmp_path)) as server:
        yield server


def wait_for(page: Any, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``check`` until it is truthy (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"waiting for {what}")


def shot(page: Any, name: str, locator: Any = None) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    (locator or page).screenshot(path=str(path))
    print(f"\nscreenshot: {path}")
    return path


def open_panel(page: Any, lab: Lab) -> float:
    """Load JupyterLab, click the panel's tab; seconds from the click to rows listed."""
    page.goto(lab.url("lab"))
    page.wait_for_selector(TAB, timeout=90_000)
    start = time.monotonic()
    page.click(TAB)
    page.wait_for_selector(f"{PANEL}[data-loaded] .mlops-run-row", timeout=60_000)
    return time.monotonic() - start


def set_theme(lab: Lab, theme: str) -> None:
    """Change the theme setting over Lab's settings API (the open page applies it live)."""
    import json
    import urllib.request

    body = json.dumps({"raw": json.dumps({"theme": theme})}).encode()
    request = urllib.request.Request(
        lab.url("lab/api/settings/@jupyterlab/apputils-extension:themes"), data=body,
        method="PUT", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 204, response.status


def row(page: Any, name: str) -> Any:
    return page.locator(f"{PANEL} .mlops-run-row").filter(
        has=page.locator(".mlops-run-name", has_text=re.compile(f"^{re.escape(name)}$")))


def test_extension_listed_enabled_and_ok(tmp_path: Path) -> None:
    env = _lab_env(tmp_path)
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                         env=env, capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"jupyter-mlops v\S+ enabled OK", text), text


def test_sidebar_live_runs_views_compare_and_themes(lab: Lab) -> None:
    dialogs: list[str] = []
    errors: list[str] = []
    with chromium_page(viewport={"width": 1400, "height": 1000}) as page:
        page.on("dialog", lambda d: d.accept() if d.type == "beforeunload" else (
            dialogs.append(f"{d.type}: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            took = open_panel(page, lab)
            print(f"\npanel open (seeded workspace): {took * 1000:.0f} ms")
            panel = page.locator(PANEL)
            for name in ("seed-a", "seed-b", XSS):
                row(page, name).wait_for(timeout=30_000)
            assert "accuracy" in row(page, "seed-a").inner_text()
            wait_for(page, "the model, the dataset and a slot", lambda: all(
                part in panel.inner_text() for part in ("seed-model:1", "stage=test", "pets:1",
                                                        "local")), timeout=30)
            # The run named like HTML is text: no <img> in the panel, no dialog.
            assert panel.locator("img").count() == 0
            assert row(page, XSS).locator(".mlops-run-name").inner_text() == XSS

            # Filter by text: only matching rows stay.
            page.fill(f"{PANEL} .mlops-filter-text", "seed-b")
            wait_for(page, "the text filter", lambda: page.locator(
                f"{PANEL} .mlops-run-row").count() == 1 and row(page, "seed-b").count() == 1)
            page.fill(f"{PANEL} .mlops-filter-text", "")
            row(page, "seed-a").wait_for(timeout=30_000)
            shot(page, "sidebar-panel.png", panel)

            # A run started from a notebook appears, then turns completed, without a reload.
            page.goto(lab.url(f"lab/tree/{NOTEBOOK}"))
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.locator("#jp-main-statusbar").get_by_text(
                re.compile(r"^(?!No Kernel).+ \| Idle$")).wait_for(timeout=60_000)
            if not page.locator(f"{PANEL}[data-loaded]").is_visible():
                page.click(TAB)
                page.wait_for_selector(f"{PANEL}[data-loaded]", timeout=60_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            live = row(page, "sidebar-live")
            live.wait_for(timeout=90_000)
            seen = live.get_attribute("data-status")
            print(f"\nthe notebook's run appeared in the panel as {seen}")
            assert seen in ("queued", "starting", "running"), seen
            wait_for(page, "the run to turn completed in the panel", lambda:
                     live.get_attribute("data-status") == "completed", timeout=120)
            assert "loss" in live.inner_text()

            # Context action: the run's code goes into the notebook as a new cell.
            run_id = live.get_attribute("data-run-id")
            live.locator(".mlops-run-name").click(button="right")
            page.get_by_role("menuitem", name="Insert ws.get_run(…) into the notebook").click()
            wait_for(page, "the inserted cell", lambda: f'ws.get_run("{run_id}")' in
                     page.locator(".jp-Notebook").inner_text(), timeout=30)

            # Its run view: a chart per metric and the log.
            live.locator(".mlops-run-open").click()
            view = page.locator(".mlops-run-view:visible")
            view.locator(".mlops-chart[data-metric='loss'] canvas").wait_for(timeout=30_000)
            wait_for(page, "the log in the run view", lambda: "line 11" in view.locator(
                ".mlops-log").inner_text(), timeout=30)
            log = view.locator(".mlops-log").inner_text()
            assert [int(n) for n in re.findall(r"^line (\d+)$", log, re.M)] == list(range(12)), log
            assert view.locator(".mlops-run-status").inner_text() == "completed"
            assert view.locator(".mlops-cancel").count() == 0  # no Cancel once ended
            shot(page, "sidebar-run-view.png")

            # Compare two runs: metrics overlaid, params side by side, differences marked.
            for name in ("seed-a", "seed-b"):
                row(page, name).locator(".mlops-select").check()
            page.click(f"{PANEL} .mlops-compare")
            compare = page.locator(".mlops-compare-view:visible")
            compare.locator(".mlops-chart[data-metric='accuracy'] canvas").wait_for(
                timeout=30_000)
            legend = compare.locator(".mlops-chart[data-metric='accuracy'] .u-legend")
            assert "seed-a" in legend.inner_text() and "seed-b" in legend.inner_text()
            diff = compare.locator("tr.mlops-diff")
            wait_for(page, "a highlighted difference", lambda: diff.count() >= 1)
            differing = [t.split("\t")[0] for t in diff.all_inner_texts()]
            assert "lr" in differing and "epochs" not in differing, differing
            shot(page, "sidebar-compare.png")

            # By keyboard: Enter on the HTML-named run opens its view; the name stays text.
            row(page, XSS).locator(".mlops-run-open").focus()
            page.keyboard.press("Enter")
            xss_view = page.locator(".mlops-run-view:visible")
            wait_for(page, "the HTML-named run's view", lambda: xss_view.locator(
                ".mlops-run-title").count() and xss_view.locator(
                ".mlops-run-title").inner_text() == XSS, timeout=30)
            assert xss_view.locator("img").count() == 0

            # The notebook's sweep: progress and best value in the panel, then its view.
            sweep = page.locator(f"{PANEL} .mlops-sweep-row").filter(has_text="sidebar-sweep")
            wait_for(page, "the sweep's 3 trials done in the panel", lambda: sweep.count() and
                     "3/3" in sweep.inner_text(), timeout=300)
            assert "best accuracy" in sweep.inner_text()
            sweep.locator(".mlops-sweep-open").click()
            board = page.locator(".mlops-sweep-view:visible .mlops-leaderboard")
            wait_for(page, "3 trials in the leaderboard", lambda: board.locator(
                "tbody tr").count() == 3, timeout=60)
            head = board.locator("thead").inner_text()
            assert "lr" in head and "units" in head and "accuracy" in head, head
            for param in ("lr", "units"):
                page.locator(f".mlops-sweep-view:visible .mlops-chart[data-param='{param}'] "
                             "canvas").wait_for(timeout=30_000)
            shot(page, "sidebar-sweep.png")
            # A trial opens from the leaderboard (keyboard); its lineage names the sweep.
            board.locator("tbody tr").first.focus()
            page.keyboard.press("Enter")
            lineage = page.locator(".mlops-run-view:visible .mlops-lineage")
            wait_for(page, "the trial's lineage", lambda: lineage.count() and
                     "trial" in lineage.inner_text(), timeout=30)

            # Dark theme: the panel and the views follow JupyterLab's variables.
            set_theme(lab, "JupyterLab Dark")
            page.reload()
            page.wait_for_selector("body[data-jp-theme-light='false']", state="attached",
                                   timeout=90_000)
            # Once the layout is restored (the notebook's tab is back), show the panel if the
            # restored layout did not (clicking the tab of a shown panel would collapse it).
            page.locator(".jp-MainAreaWidget, .jp-NotebookPanel").first.wait_for(
                timeout=60_000)
            page.locator("#jp-main-dock-panel .lm-TabBar-tab",
                         has_text=NOTEBOOK).first.wait_for(timeout=60_000)
            if "lm-mod-current" not in (page.locator(TAB).get_attribute("class") or ""):
                page.click(TAB)
            row(page, "sidebar-live").locator(".mlops-run-open").click()
            page.locator(".mlops-run-view:visible .mlops-chart canvas").first.wait_for(
                timeout=30_000)
            background = page.evaluate(
                "(sel) => getComputedStyle(document.querySelector(sel)).backgroundColor", PANEL)
            channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
            assert max(channels) < 100, f"the panel is not dark: {background}"
            shot(page, "sidebar-dark.png")
            assert not dialogs, dialogs
            assert not errors, errors
        except BaseException:
            with contextlib.suppress(Exception):
                shot(page, "sidebar-failure.png")
            with contextlib.suppress(Exception):
                print(f"panel text:\n{page.locator(PANEL).inner_text()}")
            print(f"page errors: {errors}\njupyter lab log (tail):\n{lab.log_tail()}")
            raise


@pytest.fixture
def big_lab(tmp_path: Path, ws: Any) -> Iterator[Lab]:
    from .test_server import fill_runs

    root = tmp_path / "root"
    root.mkdir()
    env = _lab_env(tmp_path)
    fill_runs(ws, 10_000)
    with jupyter_lab(root, env) as server:
        yield server


def test_panel_opens_with_10000_runs(big_lab: Lab) -> None:
    with chromium_page() as page:
        took = open_panel(page, big_lab)
        panel = page.locator(PANEL)
        loaded = int(panel.get_attribute("data-loaded"))
        listed = int(panel.get_attribute("data-runs"))
        print(f"\npanel open with 10,000 runs: {took * 1000:.0f} ms from the click to the "
              f"first {listed} rows ({loaded} ms for the panel's first page)")
        assert listed == 100
        # Responsive: more rows on demand, and a filter answered from the server.
        start = time.monotonic()
        panel.locator(".mlops-more").click()
        wait_for(page, "the second page", lambda: panel.get_attribute("data-runs") == "200")
        more = time.monotonic() - start
        start = time.monotonic()
        page.fill(f"{PANEL} .mlops-filter-text", "run-9999")
        wait_for(page, "the filtered list", lambda: panel.get_attribute("data-runs") == "1")
        print(f"next page: {more * 1000:.0f} ms; text filter over 10,000 runs: "
              f"{(time.monotonic() - start) * 1000:.0f} ms (including a 250 ms debounce)")
        assert row(page, "run-9999").count() == 1
        shot(page, "sidebar-10000-runs.png", panel)
