"""Sweeps: a grid or an Optuna search over any config keys, several seeds per point, many workers, resumable."""

from kdistill.sweep.run import SweepResult, check_sweep, run_sweep
from kdistill.sweep.space import Param, override, parse_param
from kdistill.sweep.study import SweepSpec, default_sweep_dir

__all__ = [
    "Param",
    "SweepResult",
    "SweepSpec",
    "check_sweep",
    "default_sweep_dir",
    "override",
    "parse_param",
    "run_sweep",
]
