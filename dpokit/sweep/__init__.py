"""``dpokit sweep``: hyper-parameter search over training runs on an Optuna study (docs/sweep.md)."""

from dpokit.sweep.space import Param, read_space
from dpokit.sweep.study import SweepSettings, open_study, sweep

__all__ = ["Param", "SweepSettings", "open_study", "read_space", "sweep"]
