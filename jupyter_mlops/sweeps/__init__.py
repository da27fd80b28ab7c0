"""Hyperparameter sweeps: search spaces, early-termination policies, the controller."""

from ._policies import BanditPruner, Policy, parse_policy
from ._space import Param, parse_param, parse_space
from ._sweep import Sweep, SweepSpec, create_sweep, sweep_dir

__all__ = ["BanditPruner", "Param", "Policy", "Sweep", "SweepSpec", "create_sweep",
           "parse_param", "parse_policy", "parse_space", "sweep_dir"]
