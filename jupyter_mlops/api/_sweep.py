"""``Sweep``: the facade's handle on a hyperparameter sweep (``ws.sweep(...)``, ``%sweep``).

Everything it reports is read from the store through the sweep services, so it is the same
from the notebook that started it, from another kernel, or after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RunFailed
from ..store import TERMINAL
from ._run import Run

if TYPE_CHECKING:
    import pandas as pd

    from ..sweeps import SweepSpec
    from ._workspace import Workspace


class Sweep:
    """A hyperparameter sweep. ``best_run``, ``to_dataframe()``, ``wait()``, ``resume()``."""

    def __init__(self, workspace: Workspace, sweep_id: str):
        self.workspace = workspace
        self.id = sweep_id

    @property
    def _backend(self) -> Any:
        return self.workspace.backend

    # -- state ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The sweep's stored fields (``lost`` derived when its controller is gone)."""
        from ..sweeps import sweep_row

        return sweep_row(self._backend, self.id)

    @property
    def name(self) -> str:
        return self.info()["name"]

    @property
    def status(self) -> str:
        return self.info()["status"]

    @property
    def spec(self) -> SweepSpec:
        from ..sweeps import SweepSpec

        return SweepSpec(**self.info()["spec"])

    def trials(self) -> list[Run]:
        return [Run(self.workspace, r["id"]) for r in self.workspace.store.sweep_trials(self.id)]

    def trial_rows(self) -> list[dict[str, Any]]:
        """One dict per trial: run row, final and best metric, steps logged."""
        from ..sweeps import trial_rows

        return trial_rows(self._backend, self.id, self.spec)

    def progress(self) -> dict[str, int]:
        from ..sweeps import progress

        return progress(self.trial_rows(), self.spec.trials)

    @property
    def best_run(self) -> Run | None:
        """The completed trial with the best final value of the metric."""
        from ..sweeps import best_trial

        best = best_trial(self.trial_rows(), self.spec)
        return Run(self.workspace, best["id"]) if best else None

    def to_dataframe(self) -> pd.DataFrame:
        """Trials ranked by the metric (best first): params, status, final and best values,
        and for stopped trials the reason in words."""
        from ..sweeps import leaderboard

        return leaderboard(self.trial_rows(), self.spec)

    # -- control --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> Sweep:
        """Block until the sweep ends; raise ``RunFailed`` if it did not complete."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.id} still {status} after {timeout} s")
            time.sleep(poll)
        if status != "completed":
            raise RunFailed(f"sweep {self.id} ended {status}: {self.info()['error'] or ''}")
        return self

    def cancel(self) -> None:
        """Stop the sweep: no new trials; running trials are asked to stop."""
        from ..sweeps import cancel_sweep

        cancel_sweep(self._backend, self.id)

    def resume(self) -> Sweep:
        """Restart the controller of a sweep that stopped (a crash, a killed process).
        Finished trials are kept and not repeated; trials still running are followed."""
        from ..sweeps import resume_sweep

        resume_sweep(self._backend, self.id)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of a sweep: its fields, progress and best trial."""
        from ..sweeps import best_trial, progress

        row, rows = self.info(), self.trial_rows()
        spec = self.spec
        best = best_trial(rows, spec)
        return {**row, "progress": progress(rows, spec.trials),
                "best": {"run_id": best["id"], "name": best["name"], spec.metric: best["final"],
                         "params": best["params"]} if best else None}

    # -- display --------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        from ..sweeps import summary_lines

        return summary_lines(self.info(), self.trial_rows(), self.spec)

    def widget(self, **options: Any) -> Any:
        """A live leaderboard (``SweepWidget``) of this sweep."""
        from ..widgets import SweepWidget

        return SweepWidget(self._backend, self.id, **options)

    def __repr__(self) -> str:
        return f"<Sweep {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sweep) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _ipython_display_(self) -> None:
        from ..widgets import in_kernel

        if in_kernel():
            from ..widgets import show_live

            show_live(self.widget())
        else:
            print("\n".join(self.summary_lines()))
