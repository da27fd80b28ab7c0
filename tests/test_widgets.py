"""The run widget: state after known metrics, incremental reads, history on attach, static
output, downsampling of huge series, and live following of a run in progress."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import jupyter_mlops as mlops
from jupyter_mlops.store import new_run_id
from jupyter_mlops.widgets import minmax_downsample

from .conftest import wait_until


def _finished_run(n: int = 20):
    with mlops.start_run("known", experiment="w", params={"lr": 0.1}, tags={"team": "ml"}) as run:
        for step in range(n):
            mlops.log("loss", 1.0 / (step + 1), step=step)
            mlops.log("acc", step / n, step=step)
        mlops.log("final", 0.875)  # logged once: in the table, no chart
        (mlops.outputs_dir() / "model.bin").write_bytes(b"\0" * 2048)
    return run


def test_widget_state_after_a_run_with_known_metrics(ws) -> None:
    run = _finished_run()
    widget = run.widget()
    assert widget._thread is None  # a finished run is not followed
    assert sorted(widget.charts) == ["acc", "loss"]
    loss = widget.charts["loss"].line
    assert list(loss.x) == list(range(20))
    assert np.allclose(loss.y, [1.0 / (s + 1) for s in range(20)])
    table = widget.metrics_view.value
    assert "final" in table and "0.875" in table and "0.05" in table  # latest loss = 1/20
    assert "completed" in widget.header_view.value
    assert "lr" in widget.details_view.value and "team" in widget.details_view.value
    assert "outputs/model.bin" in widget.details_view.value and "2,048" in widget.details_view.value
    assert widget.cancel_button.disabled
    assert "mlops-run-widget" in widget._dom_classes
    assert "mlops-chart-loss" in widget.charts["loss"].figure._dom_classes


def test_polling_reads_only_new_rows(ws) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "inc", "w", status="running", started_at=time.time(),
                        heartbeat_at=time.time())
    ws.store.log_metrics(run_id, [("x", s, float(s), time.time()) for s in range(100)])
    ws.store.append_logs(run_id, [("stdout", "first line\nsecond ", time.time())])
    run = ws.get_run(run_id)
    widget = run.widget(start=False)
    assert widget.feed.rows_read == 100
    widget.refresh()
    assert widget.feed.rows_read == 100  # nothing new, nothing read
    ws.store.log_metrics(run_id, [("x", s, float(s), time.time()) for s in range(100, 110)])
    ws.store.append_logs(run_id, [("stdout", "half\nthird line\n", time.time())])
    widget.refresh()
    assert widget.feed.rows_read == 110
    assert list(widget.charts["x"].line.x)[-1] == 109
    assert widget.feed.log_text() == "first line\nsecond half\nthird line"
    ws.store.set_status(run_id, "completed")
    widget.refresh()
    assert "completed" in widget.header_view.value


def test_attach_after_restart_shows_the_whole_history_then_follows(ws) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "attach", "w", status="running", started_at=time.time(),
                        heartbeat_at=time.time())
    ws.store.log_metrics(run_id, [("loss", s, 1.0 / (s + 1), time.time()) for s in range(500)])
    # A "new kernel": a widget built from nothing but the run id reads everything so far...
    widget = ws.get_run(run_id).widget(poll_interval=0.05)
    try:
        assert len(widget.charts["loss"].line.x) == 500
        # ...and keeps following what the job writes next.
        ws.store.log_metrics(run_id, [("loss", 500, 0.001, time.time())])
        wait_until(lambda: len(widget.charts["loss"].line.x) == 501, timeout=60,
                   what="the widget to pick up the new point")
        ws.store.set_status(run_id, "completed")
        wait_until(lambda: not widget.following, timeout=60,
                   what="the widget to stop following a finished run")
        assert "completed" in widget.header_view.value
    finally:
        widget.stop()


def test_static_output_has_table_image_params_and_log(ws) -> None:
    with mlops.start_run("static") as run:
        for s in range(5):
            mlops.log("loss", 1.0 / (s + 1))
    ws.store.append_logs(run.id, [("stdout", "epoch 4 done\n", time.time())])
    widget = run.widget()
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    page = bundle["text/html"]
    assert "mlops-metric-table" in page and "loss" in page and "0.2" in page
    assert "<img" in page and "data:image/png;base64," in page
    assert "epoch 4 done" in page and "completed" in page
    text = bundle["text/plain"]
    assert "loss = 0.2" in text and "completed" in text and "epoch 4 done" in text


def test_million_point_series_is_downsampled_keeping_extremes(ws) -> None:
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=1_000_000))
    values[123_457] = 1e6  # a spike that striding would miss
    values[876_543] = -1e6
    run_id = new_run_id()
    ws.store.create_run(run_id, "big", "w", status="completed")
    now = time.time()
    ws.store.log_metrics(run_id, [("v", i, float(v), now) for i, v in enumerate(values)])
    widget = ws.get_run(run_id).widget()
    chart = widget.charts["v"]
    assert 1000 <= chart.points_sent <= 2000
    assert max(chart.line.y) == 1e6 and min(chart.line.y) == -1e6
    assert chart.line.x[0] == 0 and chart.line.x[-1] == 999_999
    assert widget.feed.series["v"].n == 1_000_000  # the data itself is all there


def test_downsample_function() -> None:
    x = np.arange(10.0)
    assert minmax_downsample(x, x, 100)[0] is x  # short series untouched
    y = np.sin(np.linspace(0, 20, 100_000))
    y[5000] = np.nan
    xs, ys = minmax_downsample(np.arange(100_000.0), y, 1000)
    assert len(xs) <= 1000 and np.all(np.diff(xs) > 0)
    assert np.nanmax(ys) == np.nanmax(y) and np.nanmin(ys) == np.nanmin(y)


def test_widget_follows_a_live_run_and_cancel_button_cancels(ws) -> None:
    started, release = threading.Event(), threading.Event()
    holder = {}

    def job() -> None:
        with mlops.start_run("live") as run:
            holder["run"] = run
            started.set()
            step = 0
            while not release.is_set() and not mlops.should_stop():
                mlops.log("loss", 1.0 / (step + 1), step=step)
                step += 1
                time.sleep(0.02)

    thread = threading.Thread(target=job)
    thread.start()
    started.wait(60)
    widget = holder["run"].widget(poll_interval=0.05)
    try:
        wait_until(lambda: "loss" in widget.charts and len(widget.charts["loss"].line.x) > 20,
                   timeout=60, what="the chart to fill")
        first = len(widget.charts["loss"].line.x)
        wait_until(lambda: len(widget.charts["loss"].line.x) > first, timeout=60,
                   what="the chart to grow")
        assert "running" in widget.header_view.value
        widget.cancel_button.click()
        thread.join(60)
        assert not thread.is_alive()  # should_stop() turned True through the store
    finally:
        release.set()
        thread.join(60)
        widget.stop()
    assert holder["run"].info()["cancel_requested_at"] is not None


@pytest.mark.parametrize("lines", [3])
def test_log_pane_is_bounded(ws, lines) -> None:
    run_id = new_run_id()
    ws.store.create_run(run_id, "log", "w", status="completed")
    ws.store.append_logs(run_id, [("stdout", "".join(f"line {i}\n" for i in range(50)),
                                   time.time())])
    widget = ws.get_run(run_id).widget(log_lines=lines)
    assert widget.feed.log_text() == "line 47\nline 48\nline 49"
    widget.full_log_button.value = True  # the whole log, one click away, instead of the tail
    try:
        wait_until(lambda: "line 0\n" in widget.log_view.value, timeout=60, what="the full log")
        assert widget.log_view.value.count("line ") == 50
    finally:
        widget.stop()


def test_headless_notebook_run_keeps_the_static_result(ws_dir, tmp_path) -> None:
    """``jupyter mlops run`` of a notebook with a ``%%train`` cell: the cell waits (headless),
    runs on its parent's slot (one CPU slot: queueing behind it would deadlock), and the
    stored notebook holds the final static view — table, chart image, status."""
    import json

    from .conftest import cli, make_notebook

    nb = make_notebook(
        tmp_path / "outer.ipynb",
        "%load_ext jupyter_mlops\nimport jupyter_mlops as mlops",
        "%%train --name inner\nfor i in range(8):\n    mlops.log('loss', 1 / (i + 1))\n"
        "print('inner done')",
    )
    result = cli("run", str(nb), "--name", "outer")
    assert result.returncode == 0, result.stderr
    ws = mlops.workspace()
    outer, inner = ws.get_run("outer"), ws.get_run("inner")
    assert inner.status == "completed" and inner.info()["parent_id"] == outer.id
    assert inner.info()["resources"]["shared_with_parent"] is True
    stored = json.loads(ws.artifacts.open(outer.id, "notebook.ipynb").read())
    views = [o for o in stored["cells"][1]["outputs"] if "text/html" in o.get("data", {})]
    assert len(views) == 1
    page = "".join(views[0]["data"]["text/html"])
    assert "completed" in page and "mlops-metric-table" in page and "data:image/png" in page
    assert "0.125" in "".join(views[0]["data"]["text/plain"])


def test_runs_table_sorts_by_any_column_and_goes_live(ws) -> None:
    from jupyter_mlops.widgets import RunsTable

    for name, acc in [("a", 0.7), ("b", 0.9), ("c", 0.8)]:
        with mlops.start_run(name, experiment="cmp", params={"lr": acc / 10}):
            mlops.log("acc", acc)
    table = RunsTable(ws.backend, poll_interval=0.05)
    try:
        assert "metric.acc" in table.sort_by.options and "param.lr" in table.sort_by.options
        table.sort_by.value = "metric.acc"  # a request: the poller redraws
        wait_until(lambda: ">b<" in table.table_view.value and table.table_view.value.index(
            ">b<") < table.table_view.value.index(">a<"), timeout=60, what="sorted desc")
        assert list(table.sorted_frame()["name"]) == ["b", "c", "a"]
        table.order.value = "asc"
        assert list(table.sorted_frame()["name"]) == ["a", "c", "b"]
        wait_until(lambda: (lambda p: p.index(">a<") < p.index(">c<") < p.index(">b<"))(
            table.table_view.value), timeout=60, what="sorted asc")
        assert "metric.acc ↑" in table.table_view.value
        # Header cells are padded and nothing wraps (names, timestamps).
        assert "padding:4px 12px" in table.table_view.value
        assert "white-space:nowrap" in table.table_view.value
        # A run started later appears without Refresh, with its live status, then its end;
        # the table goes on following although no run was active before.
        run_id = new_run_id()
        ws.store.create_run(run_id, "d", "cmp", status="running", started_at=time.time(),
                            heartbeat_at=time.time())
        wait_until(lambda: ">d<" in table.table_view.value and "running" in
                   table.table_view.value, timeout=60, what="the new run")
        ws.store.set_status(run_id, "completed")
        wait_until(lambda: "running" not in table.table_view.value, timeout=60,
                   what="the table to show the ending")
        later = new_run_id()
        ws.store.create_run(later, "e-started-later", "cmp", status="queued")
        wait_until(lambda: "e-started-later" in table.table_view.value, timeout=60,
                   what="a run created once nothing was active")
        bundle = table._repr_mimebundle_()
        assert "text/html" in bundle and "e-started-later" in bundle["text/plain"]
        assert " 0 " not in bundle["text/plain"].splitlines()[1][:3]  # no index column
    finally:
        table.stop()


def test_sweep_parameter_axes_have_fixed_domains_and_readable_ticks() -> None:
    import bqplot as bq

    from jupyter_mlops.widgets._sweep_widget import _ParamAxis, log_ticks, nice_ticks

    lr = _ParamAxis("lr", "loguniform(1e-4, 1e-1)")
    assert isinstance(lr.scale, bq.LogScale) and (lr.scale.min, lr.scale.max) == (1e-4, 1e-1)
    assert lr.ticks == [1e-4, 1e-3, 1e-2, 1e-1] and lr.format  # never d3's guess (.undefinedg)
    assert lr.axis().tick_format == ".2~g"
    assert log_ticks(3e-4, 5e-2) == [1e-3, 1e-2]
    assert len(log_ticks(1e-9, 1.0)) <= 5  # many decades: every k-th, still no crowding
    keep = _ParamAxis("keep", "uniform(0.5, 1.0)")
    assert keep.ticks == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0] or len(keep.ticks) <= 6
    assert nice_ticks(0, 10) == [0, 2.5, 5, 7.5, 10]
    units = _ParamAxis("units", "choice(16, 32, 64)")
    assert units.ticks == [16.0, 32.0, 64.0]
    act = _ParamAxis("act", "choice('relu', 'tanh')")
    assert isinstance(act.scale, bq.OrdinalScale) and act.value("relu") == "relu"
    assert lr.unit(1e-4) == 0 and lr.unit(1e-1) == 1 and abs(lr.unit(1e-2) - 2 / 3) < 1e-9


def test_a_canceled_runs_interrupt_traceback_reads_as_one_line() -> None:
    from jupyter_mlops.widgets._run_widget import canceled_log

    log = ("tick 14\n\n" + "-" * 75 + "\nKeyboardInterrupt                         "
           "Traceback (most recent call last)\nCell In[3], line 4\n      2 for i in range(9):"
           "\n----> 4     time.sleep(0.2)\n\nKeyboardInterrupt: \n")
    assert canceled_log(log) == "tick 14\n\ncanceled by request at line 4 of the cell"
    assert canceled_log(log, notebook=True).endswith("canceled by request at cell 3, line 4")
    assert canceled_log("no traceback\n") == "no traceback"


def test_views_leave_a_static_form_that_replaces_a_missing_widget(ws) -> None:
    from jupyter_mlops.widgets._live import FALLBACK_CSS

    run = _finished_run(5)
    bundle = run.widget().static_bundle()
    assert bundle["text/html"].startswith(FALLBACK_CSS)
    assert "class='mlops-static'" in bundle["text/html"] and "completed" in bundle["text/plain"]
    assert ":has(.mlops-live)" in FALLBACK_CSS and ":not([data-mime-type])" in FALLBACK_CSS


def test_registry_and_targets_tables(ws, tmp_path) -> None:
    from jupyter_mlops.widgets import RegistryTable, TargetsTable

    (tmp_path / "m.txt").write_text("weights")
    ws.models.register("demo", tmp_path / "m.txt")
    models = RegistryTable(ws.backend, "models")
    page = models.table_view.value
    assert "demo" in page and "white-space:nowrap" in page and "<th" in page
    assert ".0000" not in page  # no nanosecond timestamps
    text = models.static_bundle()["text/plain"]
    assert text.splitlines()[1].lstrip().startswith("name") and "demo" in text  # no index
    assert "no datasets registered" in RegistryTable(ws.backend, "datasets").table_view.value
    assert "cpu:0" in TargetsTable(ws.backend).table_view.value


def test_attach_reopens_a_sweep_and_the_runs_table(ws, monkeypatch) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    from jupyter_mlops.magics import MlopsMagics

    shell = get_ipython()
    magics = MlopsMagics(shell)
    monkeypatch.setattr("jupyter_mlops.widgets.in_kernel", lambda: True)
    table = magics._attach(mlops.workspace(), "runs")
    try:
        assert type(table).__name__ == "RunsTable"
    finally:
        table.stop()
    with pytest.raises(UsageError, match="nor a sweep"):
        magics._attach(mlops.workspace(), "nothing-by-that-name")
