"""Hyperparameter sweeps: search spaces, early-termination policies, the controller."""

from .._fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before nbformat is imported (a 2-5 s stall): see _fastimport

from ._policies import BanditPruner, Policy, parse_policy  # noqa: E402
from ._space import Param, parse_param, parse_space  # noqa: E402
from ._sweep import Sweep, SweepSpec, create_sweep, sweep_dir  # noqa: E402

__all__ = ["BanditPruner", "Param", "Policy", "Sweep", "SweepSpec", "create_sweep",
           "parse_param", "parse_policy", "parse_space", "sweep_dir"]
