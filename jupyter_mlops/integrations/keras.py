"""A Keras callback that logs a fit to the current run and stops it when asked.

``model.fit(..., callbacks=[MlopsCallback()])`` logs every value Keras reports at the end
of each epoch (``loss``, ``accuracy``, ``val_loss``, ...) with ``step=epoch``, so a run's
metrics match ``model.fit(...).history``. With ``log_every_n_batches=N`` it also logs the
batch values every N training batches, under ``batch/<name>`` with the global batch number
as the step (a separate series: batch values are running averages within an epoch).

When ``mlops.should_stop()`` turns True (a sweep's policy pruned this trial, or the run was
canceled) it sets ``model.stop_training = True``: Keras ends the fit after the current
batch, the cell's code goes on (saving what it has), and the sweep records the trial as
pruned. ``should_stop()`` reads the store at most once a second, so checking it after every
batch costs nothing measurable.
"""

from __future__ import annotations

from typing import Any

import keras

from .. import tracking

__all__ = ["MlopsCallback"]


class MlopsCallback(keras.callbacks.Callback):
    """Log a Keras fit to the current run; stop it cooperatively when the run should stop.

    Parameters
    ----------
    log_every_n_batches
        Also log the training batch values every N batches (``batch/<name>``); ``None``
        (default) logs epochs only.
    prefix
        Prepended to every metric name (e.g. ``"head/"`` when one run fits twice).
    stop_when_asked
        Set ``model.stop_training`` when ``mlops.should_stop()`` is True (default).
    """

    def __init__(self, log_every_n_batches: int | None = None, prefix: str = "",
                 stop_when_asked: bool = True):
        super().__init__()
        if log_every_n_batches is not None and (
                isinstance(log_every_n_batches, bool) or not isinstance(log_every_n_batches, int)
                or log_every_n_batches < 1):
            raise ValueError("log_every_n_batches must be a positive integer or None, got "
                             f"{log_every_n_batches!r}")
        self.log_every_n_batches = log_every_n_batches
        self.prefix = prefix
        self.stop_when_asked = stop_when_asked
        self.stopped_epoch: int | None = None  # the epoch a stop request ended the fit at
        self._batches = 0
        self._epoch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if tracking.current_run() is None:
            raise tracking.NoActiveRun(
                "MlopsCallback logs to the current run: fit inside a %%train cell, a notebook "
                "started with `jupyter mlops run`, or a `with mlops.start_run(...):` block")
        self.stopped_epoch = None
        self._batches = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches += 1
        every = self.log_every_n_batches
        if every is not None and self._batches % every == 0:
            for key, value in (logs or {}).items():
                tracking.log(f"{self.prefix}batch/{key}", value, step=self._batches)
        self._stop_if_asked()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            tracking.log(f"{self.prefix}{key}", value, step=epoch)
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if self.stop_when_asked and not self.model.stop_training and tracking.should_stop():
            self.model.stop_training = True
            self.stopped_epoch = self._epoch
            print(f"jupyter-mlops: stopping the fit at epoch {self._epoch}: this run was asked "
                  "to stop (pruned by the sweep's policy, or canceled)")
