"""Sweeps: space parsing, the bandit policy's semantics, and real sweeps of real jobs."""

from __future__ import annotations

import math
import os
import signal

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import jupyter_mlops as mlops
from jupyter_mlops.errors import InvalidInput
from jupyter_mlops.sweeps import BanditPruner, parse_param, parse_policy, parse_space

from .conftest import wait_until

# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "args"),
    [
        ("lr=choice(1e-4, 1e-3, 1e-2)", "choice", (1e-4, 1e-3, 1e-2)),
        ("act=choice('relu', 'tanh')", "choice", ("relu", "tanh")),
        ("keep=uniform(0.5, 1.0)", "uniform", (0.5, 1.0)),
        ("lr=loguniform(1e-5, 1e-1)", "loguniform", (1e-5, 1e-1)),
        ("units=quniform(16, 128, 16)", "quniform", (16.0, 128.0, 16.0)),
        ("layers=randint(1, 4)", "randint", (1, 4)),
        ("bias=normal(0, 0.5)", "normal", (0.0, 0.5)),
    ],
)
def test_every_space_type_parses(text: str, kind: str, args: tuple) -> None:
    param = parse_param(text)
    assert (param.kind, param.args) == (kind, args)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        value = param.suggest(study.ask())
        if kind == "choice":
            assert value in args
        elif kind == "randint":
            assert isinstance(value, int) and 1 <= value <= 4
        elif kind == "quniform":
            assert value in [16.0 * i for i in range(1, 9)]
        elif kind != "normal":
            assert args[0] <= value <= args[1]
        else:
            assert math.isfinite(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr", "takes name=expression"),
        ("lr=uniform(1)", "uniform takes 2 numbers"),
        ("lr=uniform(1, 0)", "low must be below high"),
        ("lr=loguniform(0, 1)", "loguniform needs low > 0"),
        ("lr=gamma(1, 2)", "unknown distribution 'gamma'"),
        ("lr=uniform(a, b)", "arguments must be literal"),
        ("lr=__import__('os').system('true')", "expected a call"),
        ("lr=uniform(0, 1", "not an expression"),
        ("n=randint(1.5, 3)", "randint takes integers"),
        ("q=quniform(0, 1, 0)", "q must be positive"),
        ("s=normal(0, -1)", "sigma must be positive"),
        ("c=choice()", "at least one value"),
        ("c=choice(1, 1)", "repeated values"),
        ("lr=uniform(low=0, high=1)", "positional"),
    ],
)
def test_bad_space_expressions_point_at_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_param(text)
    assert message in str(info.value)
    if "=" in text:
        assert text.split("=", 1)[1] in str(info.value) or "takes name" in str(info.value)


def test_space_and_policy_errors() -> None:
    with pytest.raises(InvalidInput, match="given twice"):
        parse_space(["a=uniform(0,1)", "a=uniform(0,2)"])
    with pytest.raises(InvalidInput, match="at least one"):
        parse_space([])
    with pytest.raises(InvalidInput, match="unknown policy 'greedy'"):
        parse_policy("greedy(x=1)")
    with pytest.raises(InvalidInput, match="bandit has no option slak"):
        parse_policy("bandit(slak=0.1)")
    with pytest.raises(InvalidInput, match="exactly one of slack"):
        parse_policy("bandit(interval=2)")
    assert parse_policy("none").kind == "none"
    assert parse_policy(None).kind == "none"
    assert parse_policy("median(warmup=2)").options == {"warmup": 2}


# -- the bandit policy: golden cases of Azure ML's documented semantics ------------------------


def _study(direction: str, pruner: BanditPruner, others: list[dict[int, float]]) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner)
    for curve in others:
        study.add_trial(create_trial(value=curve[max(curve)], intermediate_values=curve,
                                     state=TrialState.COMPLETE, params={}, distributions={}))
    return study


def _verdict(study: optuna.Study, pruner: BanditPruner, curve: dict[int, float]) -> bool:
    trial = study.ask()
    for step, value in curve.items():
        trial.report(value, step)
    return pruner.prune(study, study._storage.get_trial(trial._trial_id))


@pytest.mark.parametrize(
    ("value", "pruned"),
    [(0.8 / 1.2 - 1e-6, True), (0.8 / 1.2 + 1e-6, False), (0.9, False), (0.1, True)],
)
def test_bandit_slack_factor_maximising(value: float, pruned: bool) -> None:
    pruner = BanditPruner(slack_factor=0.2)
    study = _study("maximize", pruner, [{0: 0.8}, {0: 0.5}])
    assert _verdict(study, pruner, {0: value}) is pruned


@pytest.mark.parametrize(("value", "pruned"), [(0.5 * 1.2 + 1e-6, True), (0.59, False)])
def test_bandit_slack_factor_minimising(value: float, pruned: bool) -> None:
    pruner = BanditPruner(slack_factor=0.2)
    study = _study("minimize", pruner, [{0: 0.5}, {0: 0.9}])
    assert _verdict(study, pruner, {0: value}) is pruned


@pytest.mark.parametrize(("value", "pruned"), [(0.69, True), (0.71, False)])
def test_bandit_slack_amount_is_absolute(value: float, pruned: bool) -> None:
    pruner = BanditPruner(slack_amount=0.1)
    study = _study("maximize", pruner, [{0: 0.8}])
    assert _verdict(study, pruner, {0: value}) is pruned


def test_bandit_checks_only_every_interval_from_delay() -> None:
    pruner = BanditPruner(slack_factor=0.1, evaluation_interval=2, delay_evaluation=3)
    best = {s: 0.9 for s in range(10)}
    study = _study("maximize", pruner, [best])
    assert [s for s in range(10) if pruner.evaluates_at(s)] == [3, 5, 7, 9]
    bad = {0: 0.1, 1: 0.1, 2: 0.1}
    assert _verdict(study, pruner, bad) is False  # before the delay: never checked
    assert _verdict(study, pruner, {**bad, 3: 0.1}) is True
    assert _verdict(study, pruner, {**bad, 3: 0.9, 4: 0.1}) is False  # step 4 is off-interval


def test_bandit_compares_at_equal_progress_and_explains() -> None:
    pruner = BanditPruner(slack_factor=0.15)
    # The leader reached 0.9 only at step 9; at step 2 it had 0.5.
    study = _study("maximize", pruner, [{0: 0.2, 2: 0.5, 9: 0.9}])
    good = {0: 0.25, 1: 0.4, 2: 0.48}
    assert _verdict(study, pruner, good) is False  # 0.48 >= 0.5 / 1.15
    policy = parse_policy("bandit(slack=0.15)")
    trial = study.ask()
    for step, value in {0: 0.1, 1: 0.1, 2: 0.2}.items():
        trial.report(value, step)
    frozen = study._storage.get_trial(trial._trial_id)
    assert pruner.prune(study, frozen)
    assert policy.explain(pruner, study, frozen) == (
        "bandit policy: value 0.2 at step 2 is below the threshold 0.5 / (1 + 0.15) = 0.4348 "
        "(best of other trials at that step)")


# -- real sweeps ---------------------------------------------------------------------------------

DIGITS = """
import numpy as np, time
import jupyter_mlops as mlops
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
X, y = load_digits(return_X_y=True)
X = X / 16.0
rng = np.random.default_rng(0)
order = rng.permutation(len(X))
train, test = order[:1200], order[1200:]
model = SGDClassifier(alpha=alpha, learning_rate="constant", eta0=eta0, random_state=0)
for epoch in range(8):
    model.partial_fit(X[train], y[train], classes=np.arange(10))
    mlops.log("accuracy", model.score(X[test], y[test]), step=epoch)
    if mlops.should_stop():
        break
"""


def _intervals_overlap(rows: list[dict]) -> int:
    events = []
    for row in rows:
        if row["started_at"]:
            events += [(row["started_at"], 1), (row["ended_at"] or float("inf"), -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_real_sweep_of_a_small_model_finds_a_best_run(ws, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    sweep = ws.sweep(DIGITS, params={"alpha": "loguniform(1e-5, 1e-1)",
                                     "eta0": "choice(0.001, 0.01, 0.1, 1.0)"},
                     metric="accuracy", goal="max", trials=12, concurrency=2,
                     policy="bandit(slack=0.1, delay=2)", sampler="tpe", seed=3,
                     namespace={}, name="digits", experiment="sweeps")
    sweep.wait(timeout=400)
    progress = sweep.progress()
    assert progress["done"] + progress["pruned"] == 12 and progress["failed"] == 0
    frame = sweep.to_dataframe()
    assert len(frame) == 12 and list(frame.columns[:4]) == ["trial", "run_id", "status", "accuracy"]
    best = sweep.best_run
    assert best is not None and best.status == "completed"
    assert best.metrics()["accuracy"] == frame["accuracy"].max() > 0.85
    assert set(best.params) == {"alpha", "eta0"}
    for row in sweep.trial_rows():
        assert row["sweep_id"] == sweep.id and row["experiment"] == "sweeps"
        if row["status"] == "pruned":
            assert row["error"].startswith("pruned: bandit policy: value")
    assert _intervals_overlap(sweep.trial_rows()) <= 2  # concurrency never exceeded


def test_resume_after_killing_the_controller_repeats_no_trial(ws, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    # The killed controller reads lost at once (same host: its pid is gone). lost_after stays
    # at its default: a lower one made a live trial whose beats a loaded machine delayed
    # read lost (seen once at load average 8).
    code = "import time, jupyter_mlops as mlops\nmlops.log('score', x * 2)\ntime.sleep(0.5)"
    sweep = ws.sweep(code, params={"x": "randint(0, 1000)"}, metric="score", trials=6,
                     concurrency=2, namespace={}, seed=7, name="resumable")
    wait_until(lambda: sweep.progress()["done"] >= 2, timeout=120, what="two finished trials")
    os.kill(sweep.info()["pid"], signal.SIGKILL)
    wait_until(lambda: sweep.status == "lost", timeout=30, what="the sweep to be seen lost")
    before = {r["id"]: r["params"]["x"] for r in sweep.trial_rows()}
    sweep.resume().wait(timeout=300)
    rows = sweep.trial_rows()
    assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
    assert {r["id"]: r["params"]["x"] for r in rows if r["id"] in before} == before
    numbers = [r["trial_number"] for r in rows]
    assert sorted(numbers) == list(range(6))


def test_failed_trials_are_retried_with_the_same_params(ws, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    code = ("import jupyter_mlops as mlops, pathlib\n"
            "marker = pathlib.Path(f'{x}.tried')\n"
            "if not marker.exists():\n    marker.touch()\n    raise RuntimeError('flaky')\n"
            "mlops.log('score', x)")
    sweep = ws.sweep(code, params={"x": "choice(1, 2)"}, metric="score", sampler="grid",
                     trials=10, concurrency=2, retry_failed=1, namespace={}, name="flaky")
    sweep.wait(timeout=300)
    rows = sweep.trial_rows()
    assert sweep.spec.trials == 2  # a grid of two points
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "failed", "failed"]
    retried = [r for r in rows if r["tags"].get("sweep.retry_of")]
    assert len(retried) == 2 and all(r["status"] == "completed" for r in retried)
    assert sweep.best_run.params == {"x": 2}


def test_sweep_magics_and_bad_input(ws, monkeypatch) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    ip = get_ipython()
    ip.run_line_magic("load_ext", "jupyter_mlops")
    ip.run_cell("import jupyter_mlops as mlops\nbase = 10")
    with pytest.raises(UsageError, match="uniform takes 2 numbers"):
        ip.run_cell_magic("sweep", "--param lr=uniform(1) --metric m", "pass")
    with pytest.raises(UsageError, match="needs --param"):
        ip.run_cell_magic("sweep", "--metric m", "pass")
    with pytest.raises(UsageError, match="--goal takes max or min"):
        ip.run_cell_magic("sweep", "--param a=uniform(0,1) --metric m --goal up", "pass")
    with pytest.raises(UsageError, match="grid needs discrete"):
        ip.run_cell_magic("sweep", "--param a=uniform(0,1) --metric m --sampler grid", "pass")
    assert ws.sweeps() == []
    ip.user_ns.pop("_run", None)
    with pytest.raises(UsageError, match="needs --from RUN"):
        ip.run_line_magic("sweep", "--param a=uniform(0,1) --metric m")
    # %%train, then %sweep over that run's code (carried names included).
    ip.run_cell_magic("train", "--wait -p a=1", "mlops.log('m', base + a)")
    sweep = ip.run_line_magic(
        "sweep", "--param a=choice(1,2,3) --metric m --sampler grid --trials 3 --wait")
    assert sweep.status == "completed"
    assert sorted(sweep.to_dataframe()["m"]) == [11, 12, 13]
    assert ip.user_ns["_sweep"] == sweep or ip.user_ns["_sweep"].id == sweep.id


def test_cli_sweep_over_a_notebook(ws_dir, tmp_path) -> None:
    from .conftest import cli, make_notebook

    nb = make_notebook(tmp_path / "nb.ipynb",
                       "import jupyter_mlops as mlops\nmlops.log('loss', (w - 3) ** 2)",
                       parameters="w = 0")
    result = cli("sweep", str(nb), "--param", "w=choice(1, 3, 5)", "--metric", "loss",
                 "--goal", "min", "--sampler", "grid", env={"JUPYTER_MLOPS_CPU_SLOTS": "2"})
    assert result.returncode == 0, result.stderr
    assert "best: nb-sweep-" in result.stdout and "'w': 3" in result.stdout
    bad = cli("sweep", str(nb), "--param", "w=uniform(1)", "--metric", "loss")
    assert bad.returncode == 2 and "uniform takes 2 numbers" in bad.stderr
    assert len(mlops.workspace().sweeps()) == 1


def test_one_gpu_per_trial_on_four_simulated_gpus(ws, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "0,1,2,3")
    code = ("import os, time, jupyter_mlops as mlops\n"
            "print('CUDA', os.environ['CUDA_VISIBLE_DEVICES'])\n"
            "time.sleep(2)\nmlops.log('m', x)")
    sweep = ws.sweep(code, params={"x": "randint(0, 100)"}, metric="m", trials=6,
                     concurrency=6, gpus=1, namespace={}, seed=0, name="gpus")
    sweep.wait(timeout=300)
    rows = sweep.trial_rows()
    assert all(r["status"] == "completed" for r in rows), [
        (r["name"], r["status"], r["error"]) for r in rows]
    assert _intervals_overlap(rows) <= 4
    devices = {r["id"]: r["resources"]["cuda_visible_devices"] for r in rows}
    assert set(devices.values()) <= {"0", "1", "2", "3"}
    for a in rows:  # trials that ran at the same time never shared a GPU
        for b in rows:
            if (a["id"] < b["id"] and a["started_at"] < b["ended_at"]
                    and b["started_at"] < a["ended_at"]):
                assert devices[a["id"]] != devices[b["id"]]
    for r in rows:
        assert f"CUDA {devices[r['id']]}" in mlops.workspace().get_run(r["id"]).logs()


def test_sweep_widget_leaderboard_and_static_view(ws, monkeypatch) -> None:

    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    code = ("import time, jupyter_mlops as mlops\n"
            "for step in range(6):\n"
            "    mlops.log('acc', x / 10 * (step + 1) / 6, step=step)\n"
            "    if mlops.should_stop():\n        break\n"
            "    time.sleep(0.3)")
    sweep = ws.sweep(code, params={"x": "choice(1, 9, 10)"}, metric="acc", sampler="grid",
                     concurrency=3, policy="bandit(slack=0.2, delay=2)", namespace={},
                     name="board", seed=1)
    widget = sweep.widget(poll_interval=0.2)
    try:
        sweep.wait(timeout=300)
        wait_until(lambda: widget.finished, timeout=30, what="the widget to see the end")
    finally:
        widget.stop()
    ranked = widget.ranked()
    assert [r["params"]["x"] for r in ranked[:2]] == [10, 9]
    assert widget.bar.value == 3
    board = widget.leaderboard_html()
    assert board.index(">board-") > 0 and "why it stopped" in board
    pruned = [r for r in ranked if r["status"] == "pruned"]
    assert pruned and pruned[0]["params"]["x"] == 1
    assert "bandit policy: value" in board and "threshold" in board
    chart = widget.charts["x"]
    shown = [y for mark in chart.marks.values() for y in mark.y]
    assert sorted(shown) == sorted(r["final"] for r in ranked)
    assert list(chart.best.names) == [ranked[0]["name"] + " (best)"]
    assert list(chart.marks["pruned"].names) == [pruned[0]["name"]]
    # The overlay chart: one line per trial; the pruned one ends where it stopped.
    assert len(widget.overlay.lines) == 3
    line = widget.overlay.lines[pruned[0]["id"]]
    assert list(widget.overlay.ends.x) == [line.x[-1]]
    assert widget.bar.bar_style == "success"
    assert "it stopped after step" in board
    page = widget._repr_mimebundle_()["text/html"]
    assert "data:image/png" in page and "bandit policy" in page
