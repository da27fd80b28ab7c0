"""Framework hooks with the real frameworks: the Keras callback, the Lightning logger, and
``mlops.log`` taking PyTorch, NumPy and TensorFlow scalars.

A stop request is made the way a sweep's controller makes it (``store.request_stop``) from
inside the fit, and each fit is long enough (thousands of epochs of a tiny model) that only
that request can end it early: ``should_stop()`` reads the store at most once a second.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest

import jupyter_mlops as mlops
from jupyter_mlops.errors import InvalidInput

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no INFO banner

LONG = 100_000  # epochs a fit would run if nothing stopped it


def _history(run, key: str) -> tuple[list[int], list[float]]:
    mlops.flush()
    frame = run.metric_history(key)
    return frame["step"].tolist(), frame["value"].tolist()


# -- mlops.log with framework scalars --------------------------------------------------------


def test_numpy_scalars_and_0d_arrays_log_as_floats(ws) -> None:
    with mlops.start_run("numpy") as run:
        for value in (np.float32(0.25), np.float64(0.5), np.int64(3), np.array(1.5),
                      np.array([2.5]), np.float16(0.75)):
            mlops.log("v", value)
        with pytest.raises(InvalidInput, match="real number"):
            mlops.log("v", np.array([1.0, 2.0]))
        with pytest.raises(InvalidInput, match="real number"):
            mlops.log("v", np.bool_(True))
    assert _history(run, "v") == ([0, 1, 2, 3, 4, 5], [0.25, 0.5, 3.0, 1.5, 2.5, 0.75])


def test_torch_tensors_log_with_one_item_call_each(ws) -> None:
    torch = pytest.importorskip("torch")
    weight = torch.tensor(2.0, requires_grad=True)
    loss = (weight * 3) ** 2  # a 0-d tensor in an autograd graph, as a training loop has
    values = [loss, torch.tensor(0.5), torch.tensor([0.25]), torch.tensor(7),
              torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor([[4.0]], dtype=torch.float16)]
    calls = {"item": 0, "other": 0}
    real_item = torch.Tensor.item

    def counted_item(self):
        calls["item"] += 1
        return real_item(self)

    def refused(*args, **kwargs):  # any other way to read the value is one more sync
        calls["other"] += 1
        raise AssertionError("mlops.log read a tensor other than by one .item()")

    with mlops.start_run("torch") as run:
        with mock.patch.object(torch.Tensor, "item", counted_item), \
                mock.patch.object(torch.Tensor, "__float__", refused), \
                mock.patch.object(torch.Tensor, "tolist", refused), \
                mock.patch.object(torch.Tensor, "cpu", refused), \
                mock.patch.object(torch.Tensor, "numpy", refused):
            for value in values:
                mlops.log("t", value)
        assert calls == {"item": len(values), "other": 0}
        with pytest.raises(InvalidInput, match="real number"):
            mlops.log("t", torch.ones(3))
        with pytest.raises(InvalidInput, match="real number"):
            mlops.log("t", torch.tensor(True))
    assert _history(run, "t") == ([0, 1, 2, 3, 4, 5], [36.0, 0.5, 0.25, 7.0, 1.5, 4.0])


def test_tensorflow_scalars_log_as_floats(ws) -> None:
    tf = pytest.importorskip("tensorflow")
    variable = tf.Variable(0.125)
    with mlops.start_run("tf") as run:
        for value in (tf.constant(0.5), tf.constant([1.5]), tf.constant(3, dtype=tf.int64),
                      variable, tf.reduce_mean(tf.constant([1.0, 2.0]))):
            mlops.log("t", value)
        with pytest.raises(InvalidInput, match="real number"):
            mlops.log("t", tf.constant([1.0, 2.0]))
    assert _history(run, "t") == ([0, 1, 2, 3, 4], [0.5, 1.5, 3.0, 0.125, 1.5])


# -- Keras ---------------------------------------------------------------------------------


def _keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    return keras, model, x, y


def test_keras_epochs_logged_match_the_history(ws) -> None:
    _, model, x, y = _keras_model()
    from jupyter_mlops.integrations.keras import MlopsCallback

    with mlops.start_run("keras") as run:
        history = model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0,
                            callbacks=[MlopsCallback(log_every_n_batches=2)]).history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in history.items():
        steps, logged = _history(run, key)
        assert steps == [0, 1, 2, 3], key
        assert logged == pytest.approx(values, rel=1e-6), key
    # 48 training rows in batches of 16: 3 batches an epoch, 12 in all, every 2nd logged.
    steps, _ = _history(run, "batch/loss")
    assert steps == [2, 4, 6, 8, 10, 12]
    assert run.status == "completed"


def test_keras_fit_stops_when_the_run_is_asked_to(ws) -> None:
    keras, model, x, y = _keras_model()
    from jupyter_mlops.integrations.keras import MlopsCallback

    class Prune(keras.callbacks.Callback):  # what the sweep controller does, from inside
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                ws.store.request_stop(mlops.current_run().id, "pruned: test")

    hook = MlopsCallback()
    with mlops.start_run("keras-stop") as run:
        history = model.fit(x, y, epochs=LONG, batch_size=64, verbose=0,
                            callbacks=[Prune(), hook]).history
    epochs = len(history["loss"])
    assert 3 <= epochs < LONG
    assert hook.stopped_epoch is not None and hook.stopped_epoch >= 2
    steps, logged = _history(run, "loss")
    assert steps == list(range(epochs))  # every epoch that ran, and only those
    assert logged == pytest.approx(history["loss"], rel=1e-6)


def test_keras_callback_outside_a_run_says_where_to_fit(ws) -> None:
    _, model, x, y = _keras_model()
    from jupyter_mlops.integrations.keras import MlopsCallback

    with pytest.raises(mlops.tracking.NoActiveRun, match="%%train"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MlopsCallback()])
    with pytest.raises(ValueError, match="positive integer"):
        MlopsCallback(log_every_n_batches=0)


# -- Lightning -----------------------------------------------------------------------------


def _lightning_parts(epoch_values: list[float] | None = None):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    pl.seed_everything(0, verbose=False)
    x = torch.randn(64, 4)
    y = (x[:, :1] > 0).float()

    class Tiny(pl.LightningModule):
        def __init__(self, lr: float = 0.05):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            xb, yb = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(xb), yb)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            xb, yb = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(xb), yb)
            self.log("val_loss", loss)

        def on_validation_epoch_end(self):
            if epoch_values is not None and not self.trainer.sanity_checking:
                epoch_values.append(float(self.trainer.callback_metrics["val_loss"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    data = DataLoader(TensorDataset(x, y), batch_size=16)
    return pl, Tiny(), data


def _trainer(pl, max_epochs: int, logger, callbacks=()):
    return pl.Trainer(max_epochs=max_epochs, logger=logger, callbacks=list(callbacks),
                      accelerator="cpu", devices=1, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0)


def test_lightning_logger_logs_every_epoch_and_the_hyperparameters(ws) -> None:
    seen: list[float] = []
    pl, module, data = _lightning_parts(seen)
    from jupyter_mlops.integrations.lightning import MlopsLogger

    logger = MlopsLogger()
    with mlops.start_run("lightning") as run:
        _trainer(pl, 3, logger, [logger]).fit(module, data, data)
        assert logger.version == run.id and logger.experiment == run
    assert len(seen) == 3
    steps, logged = _history(run, "val_loss")
    assert logged == pytest.approx(seen, rel=1e-6)
    assert steps == [3, 7, 11]  # Lightning's global step: 4 batches an epoch
    _, train_loss = _history(run, "train_loss")
    assert len(train_loss) == 3
    assert run.params["lr"] == 0.05
    assert run.status == "completed"


def test_lightning_fit_stops_when_the_run_is_asked_to(ws, capsys) -> None:
    seen: list[float] = []
    pl, module, data = _lightning_parts(seen)
    from jupyter_mlops.integrations.lightning import MlopsLogger

    class Prune(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                ws.store.request_stop(mlops.current_run().id, "pruned: test")

    logger = MlopsLogger()
    with mlops.start_run("lightning-stop") as run:
        trainer = _trainer(pl, LONG, logger, [Prune(), logger])
        trainer.fit(module, data, data)
    assert 3 <= len(seen) < LONG
    assert logger.stopped_epoch is not None and logger.stopped_epoch >= 2
    assert "stopping the fit" in capsys.readouterr().out
    _, logged = _history(run, "val_loss")
    assert logged == pytest.approx(seen, rel=1e-6)


def test_lightning_logger_alone_says_it_cannot_stop_the_fit(ws, capsys) -> None:
    pl, module, data = _lightning_parts()
    from jupyter_mlops.integrations.lightning import MlopsLogger

    with mlops.start_run("lightning-logger-only") as run:
        ws.store.request_stop(run.id, "pruned: test")
        _trainer(pl, 2, MlopsLogger()).fit(module, data, data)
    assert "pass callbacks=[logger] too" in capsys.readouterr().err
    assert len(_history(run, "val_loss")[1]) == 2
