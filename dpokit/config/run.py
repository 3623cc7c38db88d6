"""The config of ``dpokit sft`` and ``dpokit dpo``: one section per component, each in its own
module here (model, data, loss, train, guard), and every cross-field rule in ``RunConfig.validate``,
so a bad setting fails before any model is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpokit.config.data import DataConfig
from dpokit.config.flags import config_flags, spellings
from dpokit.config.guard import GuardConfig
from dpokit.config.loss import LossConfig
from dpokit.config.model import LoraConfig, ModelConfig, fold_bf16
from dpokit.config.train import TrainConfig
from dpokit.config.trackers import report_to_problem
from dpokit.errors import UserError


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> RunConfig:
        """Cross-field rules; raises UserError naming the offending setting."""
        from dpokit.losses import all_losses, get_loss

        try:
            spec = get_loss(self.loss.name)
        except (KeyError, ValueError) as exc:
            raise UserError(exc.args[0], where="config", field="loss.name") from None
        self.loss.resolve_defaults(spec.defaults)
        t, d, lo = self.train, self.data, self.loss
        tie_losses = ", ".join(name for name, s in all_losses().items() if s.takes_ties)
        t.dtype, t.bf16 = fold_bf16(t.dtype, t.bf16, "train."), None
        checks = [
            (not self.model.path, "model.path", "is required (--model)"),
            (not d.train and not d.sources, "data.train", "is required (--data)"),
            (t.batch_size < 1, "train.batch_size", "must be ≥ 1"),
            (t.logprob_chunk < 0, "train.logprob_chunk", "must be ≥ 0 (0: no chunking)"),
            (t.grad_accum < 1, "train.grad_accum", "must be ≥ 1"),
            (t.max_steps == 0 or t.max_steps < -1, "train.max_steps", "must be -1 or ≥ 1"),
            (t.epochs < 1, "train.epochs", "must be ≥ 1"),
            (t.lr <= 0, "train.lr", "must be > 0"),
            (t.warmup_steps < 0, "train.warmup_steps", "must be ≥ 0"),
            (t.max_grad_norm < 0, "train.max_grad_norm", "must be ≥ 0"),
            (d.max_length < 2, "data.max_length", "must be ≥ 2"),
            (not 1 <= d.max_prompt_length < d.max_length, "data.max_prompt_length",
             "must be ≥ 1 and smaller than data.max_length"),
            *d.checks(),
            (d.ties == "keep" and not spec.takes_ties, "data.ties",
             f"loss '{spec.name}' does not train on ties; 'keep' needs one that does ({tie_losses}) "
             "or `dpokit data convert`"),
            *lo.checks(),
            *self._ref_sync_checks(spec.needs_reference),
            (spec.token_kl and t.ref not in ("copy", "adapter"), "train.ref",
             f"loss '{spec.name}' needs the reference's full per-token distributions; use copy or adapter"),
            (self.lora.r < 1, "lora.r", "must be ≥ 1"),
            (bool(problem := self.lora.init_problem()), "lora.init", problem),
            (t.proximal_mu < 0, "train.proximal_mu", "must be ≥ 0 (0: no proximal term)"),
            (t.save_total_limit < 0, "train.save_total_limit", "must be ≥ 0 (0 keeps all)"),
            *self._best_checks(),
            *self.guard.checks(bool(d.eval), spec.needs_reference and t.ref != "none", t.save_steps),
            (bool(t.registry) and Path(t.registry).is_file(), "train.registry",
             "is a file; give a folder"),
            (bool(problem := report_to_problem(t.report_to)), "train.report_to", problem),
            (t.run_name is not None and (not t.run_name.strip() or "/" in t.run_name or "\\" in t.run_name
                                         or t.run_name in (".", "..")), "train.run_name",
             "must be a plain name (it names the run's TensorBoard folder): no slashes, not empty"),
            (spec.needs_reference and t.ref == "none", "train.ref",
             f"loss '{spec.name}' needs a reference; use copy, adapter or precomputed"),
            (t.ref == "adapter" and not self.lora.enabled, "train.ref",
             "'adapter' needs LoRA (--lora): the reference is the policy with adapters off"),
            (t.ref == "adapter" and self.model.ref_path is not None, "train.ref",
             "'adapter' uses the policy's own base weights; drop --ref-model or use copy/precomputed"),
            *self._logged_checks(),
        ]
        for bad, key, msg in checks:
            if bad:
                raise UserError(msg, where="config", field=key)
        return self

    def _ref_sync_checks(self, needs_reference: bool) -> list[tuple[bool, str, str]]:
        """A moving reference (TR-DPO) needs one that can follow the policy's weights."""
        t = self.train
        return [
            (t.ref_sync_steps < 0, "train.ref_sync_steps", "must be ≥ 0 (0: the reference stays fixed)"),
            (t.ref_sync_steps > 0 and (t.ref not in ("copy", "adapter") or not needs_reference), "train.ref_sync_steps",
             f"a moving reference (TR-DPO) needs --ref copy or adapter; a '{t.ref}' reference cannot follow the policy"),
            (t.ref_sync_steps > 0 and t.ref == "copy" and self.lora.enabled, "train.ref_sync_steps",
             "a moving copied reference mixes in the policy's full weights; with LoRA use --ref adapter"),
            (not 0 < t.ref_sync_alpha <= 1, "train.ref_sync_alpha", "must be in (0, 1]"),
        ]

    def _logged_checks(self) -> list[tuple[bool, str, str]]:
        """The logged reference reads the logger's propensities from the records, not from a model."""
        t, policy = self.train, self.model.policy
        return [
            (t.ref == "logged" and policy != "item_ranker", "train.ref",
             f"'logged' takes the reference from the logged propensities that item_ranker records carry "
             f"(dpokit rank records); policy '{policy}' has none: use copy or precomputed"),
            (t.ref == "logged" and self.model.ref_path is not None, "train.ref",
             "'logged' takes the reference from the records' propensities; drop --ref-model"),
        ]

    def _best_checks(self) -> list[tuple[bool, str, str]]:
        """``save_best_metric`` must be measured at every checkpoint's own step."""
        t, metric = self.train, self.train.save_best_metric
        if not metric:
            return []
        if metric.startswith("eval/"):
            every, name = t.eval_steps, "train.eval_steps"
        else:
            every, name = t.logging_steps, "train.logging_steps"
        return [
            (t.save_steps < 1, "train.save_best_metric", "needs checkpoints: set train.save_steps (--save-steps)"),
            (metric.startswith("eval/") and not self.data.eval, "train.save_best_metric",
             f"'{metric}' needs held-out data (--eval-data)"),
            (t.save_steps >= 1 and (every < 1 or t.save_steps % every != 0), "train.save_best_metric",
             f"'{metric}' must be measured at every checkpoint: set {name} to a divisor of "
             f"train.save_steps ({t.save_steps}); it is {every}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DataCommandConfig(RunConfig):
    """A run config of which ``dpokit data`` uses only the data section: only it is checked."""

    def validate(self) -> DataCommandConfig:
        for bad, key, msg in self.data.checks():
            if bad:
                raise UserError(msg, where="config", field=key)
        return self


DATA_COMMAND_NOT_FLAGS = {
    **{f"{section}.": "dpokit data reads only the data section" for section in ("model", "lora", "loss", "train",
                                                                              "guard")},
    "data.train": "the input file is the command's argument", "data.eval": "one input file at a time",
    "data.max_length": "token budgets apply when training tokenizes", "data.max_prompt_length": "as data.max_length",
    "data.cache": "dpokit data caches nothing", "data.cache_dir": "as data.cache",
}
"""Fields of ``DataCommandConfig`` that ``dpokit data`` offers no flag for, and why."""

TRAIN_FLAG_SET = config_flags(RunConfig)
"""The flags of ``dpokit sft`` and ``dpokit dpo``: one per field of ``RunConfig``."""
FLAG_FIELDS: dict[str, str] = spellings(TRAIN_FLAG_SET)
"""Each spelling of a training flag (underscores) -> the field it sets."""
