"""A PyTorch Lightning logger that writes to the current run and stops the fit when asked.

::

    logger = MlopsLogger()
    trainer = L.Trainer(max_epochs=10, logger=logger, callbacks=[logger])

As the ``logger`` it stores every value the ``LightningModule`` logs with ``self.log(...)``
at the step Lightning gives (the global step, as Lightning's CSV and TensorBoard loggers do)
and the module's hyperparameters (``save_hyperparameters()``) as the run's params. Listed in
``callbacks`` as well, it turns ``mlops.should_stop()`` (a sweep's policy pruned the trial,
or the run was canceled) into ``trainer.should_stop = True``: Lightning ends the fit after
the current batch and the sweep records the trial as pruned. A Lightning logger never sees
the trainer, hence the second mention; used only as a logger it says once, when a stop is
requested, that it cannot stop the fit.

Lightning 2 ships as ``lightning`` (``lightning.pytorch``) and as ``pytorch_lightning``; the
trainer and this logger must come from the same one: ``lightning`` is used when installed.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities import rank_zero_only
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    from pytorch_lightning.loggers import Logger  # type: ignore[no-redef]
    from pytorch_lightning.utilities import rank_zero_only  # type: ignore[no-redef]

from .. import tracking

__all__ = ["MlopsLogger"]


class MlopsLogger(Logger, Callback):
    """Log a Lightning fit to the current run; as a callback too, stop it when asked.

    Parameters
    ----------
    prefix
        Prepended to every metric name.
    stop_when_asked
        As a callback, set ``trainer.should_stop`` when ``mlops.should_stop()`` is True.
    """

    def __init__(self, prefix: str = "", stop_when_asked: bool = True):
        Logger.__init__(self)
        self.prefix = prefix
        self.stop_when_asked = stop_when_asked
        self.stopped_epoch: int | None = None
        self._warned = False

    # -- Logger ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "jupyter-mlops"

    @property
    def version(self) -> str:
        run = tracking.current_run()
        return run.id if run is not None else ""

    @property
    def experiment(self) -> Any:
        """The ``Run`` this logger writes to (Lightning loggers expose their backend here)."""
        return tracking.current_run()

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any,
                        **kwargs: Any) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        tracking.log_params(dict(params or {}))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            tracking.log(f"{self.prefix}{key}", value, step=step)
        if not self._warned and not self._is_callback and self.stop_when_asked \
                and tracking.should_stop():
            self._warned = True
            sys.stderr.write("jupyter-mlops: this run was asked to stop, but MlopsLogger "
                             "is not among the Trainer's callbacks, so it cannot end the "
                             "fit: pass callbacks=[logger] too\n")

    # -- Callback --------------------------------------------------------------------------

    _is_callback = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._is_callback = True

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if tracking.current_run() is None:
            raise tracking.NoActiveRun(
                "MlopsLogger logs to the current run: fit inside a %%train cell, a notebook "
                "started with `jupyter mlops run`, or a `with mlops.start_run(...):` block")
        self.stopped_epoch = None

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop_if_asked(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: Any) -> None:
        if self.stop_when_asked and not trainer.should_stop and tracking.should_stop():
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            print(f"jupyter-mlops: stopping the fit at epoch {trainer.current_epoch}: this run "
                  "was asked to stop (pruned by the sweep's policy, or canceled)")
