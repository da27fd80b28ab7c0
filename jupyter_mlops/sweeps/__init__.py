"""Hyperparameter sweeps: search spaces, early-termination policies, the controller, and
the services the API's ``Sweep`` reads a sweep's leaderboard through."""

from .._fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before nbformat is imported (a 2-5 s stall): see _fastimport

from ._policies import BanditPruner, Policy, parse_policy  # noqa: E402
from ._space import Param, parse_param, parse_space  # noqa: E402
from ._sweep import (  # noqa: E402
    SweepSpec,
    best_trial,
    cancel_sweep,
    create_sweep,
    leaderboard,
    progress,
    resume_sweep,
    start_controller,
    start_sweep,
    summary_lines,
    sweep_dir,
    sweep_row,
    trial_rows,
)

__all__ = ["BanditPruner", "Param", "Policy", "SweepSpec", "best_trial", "cancel_sweep",
           "create_sweep", "leaderboard", "parse_param", "parse_policy", "parse_space",
           "progress", "resume_sweep", "start_controller", "start_sweep", "summary_lines",
           "sweep_dir", "sweep_row", "trial_rows"]
