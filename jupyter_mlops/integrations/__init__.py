"""Hooks that connect training frameworks to the in-run API.

Each hook is its own module and imports its framework only when imported itself, so
``import jupyter_mlops`` never pays for (or needs) Keras or Lightning:

- ``jupyter_mlops.integrations.keras.MlopsCallback`` (``pip install "jupyter-mlops[tensorflow]"``)
- ``jupyter_mlops.integrations.lightning.MlopsLogger`` (``pip install "jupyter-mlops[lightning]"``)

Both log what the framework reports through ``mlops.log`` and turn ``mlops.should_stop()``
(a sweep's policy pruned the trial, or the run was canceled) into the framework's own way of
ending a fit early, so a pruned trial stops at the next batch and ends cleanly.

They sit above ``tracking`` (they use the in-run API) and below the surfaces.
"""

from __future__ import annotations

__all__: list[str] = []
