"""The in-run logging API, in-process (start_run) and as a job would use it (env var)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import jupyter_mlops as mlops
from jupyter_mlops.errors import InvalidInput
from jupyter_mlops.tracking import NoActiveRun

from .conftest import wait_until


def test_nan_and_infinities_round_trip(any_ws) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    with mlops.start_run("special", experiment="e") as run:
        mlops.log("x", math.nan)
        mlops.log("x", math.inf)
        mlops.log("x", -math.inf)
        mlops.log("x", 1.5)
    history = run.metric_history("x")
    values = history["value"].tolist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.5]
    assert history["step"].tolist() == [0, 1, 2, 3]
    # The stored representation: NaN is NULL (SQLite cannot hold NaN), inf stays a REAL.
    with ws.store.read() as conn:
        raw = [r[0] for r in conn.exec_driver_sql("SELECT value FROM metrics ORDER BY id")]
    assert raw[0] is None and raw[1] == math.inf
    latest = mlops.workspace().get_run(run.id).metrics()
    assert latest == {"x": 1.5}


def test_steps_auto_increment_per_key_and_follow_explicit_steps(any_ws) -> None:
    with mlops.start_run("steps") as run:
        mlops.log("a", 1.0)
        mlops.log("a", 2.0)
        mlops.log("b", 5.0, step=10)
        mlops.log("b", 6.0)
        mlops.log("c", np.float32(0.25), step=np.int64(3))
        mlops.log("d", np.array(7.0))
    assert run.metric_history("a")["step"].tolist() == [0, 1]
    assert run.metric_history("b")["step"].tolist() == [10, 11]
    assert run.metrics() == {"a": 2.0, "b": 6.0, "c": 0.25, "d": 7.0}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("acc", "0.9", "must be a real number"),
        ("acc", None, "must be a real number"),
        ("acc", 1 + 2j, "must be a real number"),
        ("acc", True, "must be a real number"),
        ("acc", [1.0], "must be a real number"),
        ("", 1.0, "must not be empty"),
        ("x" * 300, 1.0, "the limit is 250"),
        ("a\nb", 1.0, "control characters"),
        (3, 1.0, "must be a string"),
    ],
)
def test_bad_metrics_fail_at_the_call(ws, key, value, message) -> None:
    with mlops.start_run("bad") as run:
        with pytest.raises(InvalidInput, match=message):
            mlops.log(key, value)
        mlops.log("ok", 1.0)  # the writer is unharmed
    assert run.status == "completed"
    assert run.metrics() == {"ok": 1.0}


def test_bad_step_fails_at_the_call(ws) -> None:
    with mlops.start_run("bad-step"), pytest.raises(InvalidInput, match="step"):
        mlops.log("x", 1.0, step=1.5)


def test_points_become_durable_without_explicit_flush(any_ws) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    with mlops.start_run("live") as run:
        for i in range(100):
            mlops.log("loss", 1.0 / (i + 1))
        # Another reader (its own Store) sees the points while the run is still going.
        from jupyter_mlops.store import Store

        reader = Store(ws.location)
        wait_until(lambda: len(reader.metric_rows(run.id)) == 100, timeout=60,
                   what="the background writer to flush")
        reader.close()
        assert run.status == "running"


def test_failure_in_block_marks_failed_and_clears_current_run(ws) -> None:
    with pytest.raises(ZeroDivisionError), mlops.start_run("boom") as run:
        mlops.log("before", 1.0)
        (mlops.outputs_dir() / "partial.txt").write_text("kept")
        1 / 0  # noqa: B018
    assert run.status == "failed"
    assert "ZeroDivisionError" in run.error
    assert run.metrics() == {"before": 1.0}
    assert [a["path"] for a in run.artifacts()] == ["outputs/partial.txt"]
    assert mlops.current_run() is None
    with mlops.start_run("next") as nxt:  # no stale "run already active"
        assert mlops.current_run() == nxt


def test_outside_a_run_is_a_clear_error(ws) -> None:
    with pytest.raises(NoActiveRun, match="no active run"):
        mlops.log("x", 1.0)
    assert mlops.current_run() is None


def test_params_images_and_outputs(any_ws, tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with mlops.start_run("art", params={"lr": 0.1}) as run:
        mlops.log_params({"batch": np.int64(32), "layers": [64, 32]})
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        assert mlops.log_image("curve", fig) == "images/curve.png"
        mlops.log_image("pil", Image.new("RGB", (4, 4), "red"))
        mlops.log_image("array", np.zeros((8, 8)), step=2)
        (mlops.outputs_dir() / "sub").mkdir()
        (mlops.outputs_dir() / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
        with pytest.raises(InvalidInput, match="log_image takes"):
            mlops.log_image("bad", "not an image")
    assert run.params == {"lr": 0.1, "batch": 32, "layers": [64, 32]}
    paths = {a["path"]: a["size"] for a in run.artifacts()}
    assert set(paths) == {"images/curve.png", "images/pil.png", "images/array/step_000002.png",
                          "outputs/sub/weights.bin"}
    assert paths["outputs/sub/weights.bin"] == 1000
    dest = run.download("images/curve.png", tmp_path)
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folder = run.download("outputs", tmp_path / "out")
    assert (folder / "sub" / "weights.bin").stat().st_size == 1000
    with pytest.raises(mlops.NotFound, match="no artifact"):
        run.download("missing.txt", tmp_path)


def test_nested_runs_record_their_parent(any_ws) -> None:
    with mlops.start_run("outer") as outer, mlops.start_run("inner") as inner:
        mlops.log("x", 1.0)
    assert inner.info()["parent_id"] == outer.id
    assert outer.metrics() == {} and inner.metrics() == {"x": 1.0}


def test_should_stop_follows_cancel_requests(any_ws) -> None:
    with mlops.start_run("stoppable") as run:
        assert mlops.should_stop() is False
        run.cancel()
        import jupyter_mlops.tracking as tracking

        tracking._stack.get()[-1]._stop_checked = 0.0  # skip the once-a-second rate limit
        assert mlops.should_stop() is True


def test_environment_is_recorded(ws) -> None:
    with mlops.start_run("env") as run:
        pass
    env = run.environment
    assert env["python"].count(".") == 2
    assert "sqlalchemy" in env["packages"]
    assert env["gpus"] == []  # no nvidia-smi on the test machines


def test_numpy_scalars_and_one_element_arrays_log_as_numbers(ws) -> None:
    with mlops.start_run("numpy-values") as run:
        for value in (np.float32(0.5), np.float64(1.5), np.int64(7), np.array(2.5),
                      np.array([3.5])):
            mlops.log("v", value)
        with pytest.raises(InvalidInput, match="must be a real number"):
            mlops.log("v", np.array([1.0, 2.0]))
    stored = [value for _, _, _, value, _ in ws.store.metric_rows(run.id, "v")]
    assert stored == [0.5, 1.5, 7.0, 2.5, 3.5]
