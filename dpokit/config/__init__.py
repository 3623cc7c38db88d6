"""Typed configs: one dataclass per component, each field's default and docstring in one place,
loaded from YAML and overridden by flags generated from the fields (``flags.py``).

``run.RunConfig`` (training) gathers ``model``, ``data``, ``loss``, ``train`` and ``guard``;
``eval.EvalConfig`` is ``dpokit eval``'s; ``load.load_config`` checks that every key names a
field with a value of its type, then runs the config's ``validate``.
"""

from dpokit.config.data import FORMAT_NAMES, DataConfig
from dpokit.config.eval import EvalConfig
from dpokit.config.guard import GuardConfig
from dpokit.config.load import load_config, save_config
from dpokit.config.loss import LossConfig
from dpokit.config.model import REGISTRY_ENV, Dtype, LoraConfig, ModelConfig, default_registry, fold_bf16
from dpokit.config.rank import RankEvalConfig, RankRecordsConfig, SimulateConfig
from dpokit.config.run import DATA_COMMAND_NOT_FLAGS, FLAG_FIELDS, TRAIN_FLAG_SET, DataCommandConfig, RunConfig
from dpokit.config.train import TrainConfig

__all__ = ["DATA_COMMAND_NOT_FLAGS", "FLAG_FIELDS", "FORMAT_NAMES", "REGISTRY_ENV", "TRAIN_FLAG_SET", "DataCommandConfig",
           "DataConfig", "Dtype", "EvalConfig", "GuardConfig", "LoraConfig", "LossConfig", "ModelConfig", "RankEvalConfig",
           "RankRecordsConfig", "RunConfig", "SimulateConfig", "TrainConfig", "default_registry", "fold_bf16", "load_config", "save_config"]
