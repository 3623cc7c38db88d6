"""Settings of ``dpokit update``: a run config (the challenger's training, with the flags of
``dpokit dpo``) plus an ``update`` section: the A/B evaluation and the promote-or-refuse rule.

The model is not given: training starts from the registry's current version (the champion), and
the run folder is the update's own, inside the registry (``REGISTRY/updates/ID/run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dpokit.config import RunConfig
from dpokit.config.flags import config_flags
from dpokit.errors import UserError
from dpokit.update.decision import DecisionRule


@dataclass
class UpdateSettings:
    """The challenger's evaluation against the champion and the rule that decides (docs/reliability.md)."""

    eval_prompts: str = ""
    """Held-out prompts the challenger and the champion both answer, for the judge's A/B comparison."""
    judge: str = ""
    """The judge of the A/B comparison (as ``dpokit eval --judge``)."""
    eval_pairs: str = ""
    """Held-out preference pairs, comma-separated: the new task's first, then earlier ones whose accuracy
    must not fall (forgetting); each file's accuracy is reported and checked on its own."""
    data_replay: str = ""
    """Earlier training data mixed into the new, ``FILE:SHARE,...`` (``old.jsonl:0.2``: a fifth of the
    training records are drawn from old.jsonl), in the same format as ``--data``."""
    reference: Literal["champion", "base"] = "champion"
    """The challenger's reference in training: the champion, or the base model the lineage started from."""
    win_margin: float = 0.02
    """Promote only if the win rate's 95 per cent interval lies above 0.5 by more than this."""
    max_kl: float = 5.0
    """Promote only if the sampled KL of the challenger to the champion (nats per answer) is below this."""
    acc_drop: float = 0.05
    """Promote only if no held-out pair file's reward accuracy falls more than this below the champion's."""
    eval_num_prompts: int = 0
    """Use the first N held-out prompts (0: all)."""
    max_new_tokens: int = 64
    """Answer budget of each sampled answer."""
    generation_batch_size: int = 16
    """Prompts per generation batch."""
    wait: bool = False
    """When another update holds the registry, wait for it (default: exit with code 2)."""

    def rule(self) -> DecisionRule:
        return DecisionRule(win_margin=self.win_margin, max_kl=self.max_kl, acc_drop=self.acc_drop)

    def pair_files(self) -> list[str]:
        return [p for p in self.eval_pairs.split(",") if p]

    def replay(self) -> list[tuple[str, float]]:
        """(file, share) of each ``data_replay`` entry."""
        out = []
        for entry in (e for e in self.data_replay.split(",") if e):
            path, sep, share = entry.rpartition(":")
            try:
                value = float(share)
            except ValueError:
                value = -1.0
            if not sep or not path or not 0 < value < 1:
                raise UserError(f"must be FILE:SHARE with 0 < SHARE < 1; got {entry!r}", where="config",
                                field="update.data_replay")
            out.append((path, value))
        if sum(s for _, s in out) >= 1:
            raise UserError("the replay shares must add up to less than 1", where="config", field="update.data_replay")
        return out

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (not self.eval_prompts, "update.eval_prompts", "is required (--eval-prompts)"),
            (not self.judge, "update.judge", "is required (--judge package.module:function, rm:PATH or llm:PATH)"),
            (self.win_margin < 0, "update.win_margin", "must be ≥ 0"),
            (self.max_kl <= 0, "update.max_kl", "must be > 0"),
            (self.acc_drop < 0, "update.acc_drop", "must be ≥ 0"),
            (self.eval_num_prompts < 0, "update.eval_num_prompts", "must be ≥ 0 (0: all)"),
            (self.max_new_tokens < 1, "update.max_new_tokens", "must be ≥ 1"),
            (self.generation_batch_size < 1, "update.generation_batch_size", "must be ≥ 1"),
        ]


@dataclass
class UpdateConfig(RunConfig):
    """A challenger's training run, started from the champion, plus the update's own settings."""

    update: UpdateSettings = field(default_factory=UpdateSettings)

    def validate(self) -> UpdateConfig:
        checks = [
            (not self.train.registry, "train.registry", "is required (--registry, or set DPOKIT_REGISTRY)"),
            (not self.data.train, "data.train", "is required (--data: the new feedback)"),
            (bool(self.model.path), "model.path", "is the registry's current version; do not set it"),
            (self.model.ref_path is not None, "model.ref_path", "is the champion or the base (--reference)"),
            *self.update.checks(),
        ]
        for bad, key, msg in checks:
            if bad:
                raise UserError(msg, where="config", field=key)
        self.update.replay()  # raises on a malformed entry
        from dpokit.losses import get_loss

        self.loss.resolve_defaults(get_loss(self.loss.name).defaults)  # β of the A/B test's implicit reward
        return self  # the training settings are checked once the champion fills model.path


UPDATE_NOT_FLAGS = ("model.path", "model.ref_path", "train.output", "train.resume")
"""Set by the update itself: the champion, its reference, the update's run folder, and resuming."""
UPDATE_FLAG_SET = config_flags(UpdateConfig, skip=UPDATE_NOT_FLAGS)
