"""The ``guard:`` section of a run config: what the training loop does about non-finite steps and
collapsing metrics (docs/reliability.md, "Guards").
``RunConfig`` holds it as ``guard``; its flags are ``--guard-FIELD`` (``dpokit.config.flags``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GuardConfig:
    enabled: bool = True
    """Skip (and count) an optimizer step whose loss or gradient norm is NaN or infinite, and roll
    back as set below; off: such a step is applied like any other."""
    max_bad_steps: int = 3
    """Roll back to the newest checkpoint after this many consecutive skipped steps (0: never; keep
    skipping)."""
    lr_factor: float = 0.5
    """Each rollback multiplies the learning rate by this, for the rest of the run."""
    max_rollbacks: int = 3
    """Stop with an error instead of rolling back more than this many times in one run."""
    eval_accuracy_drop: float | None = None
    """Roll back when the held-out reward accuracy (``eval/rewards/accuracies``) falls more than this
    below the best value seen so far, e.g. 0.2 (off unless set)."""
    max_kl: float | None = None
    """Roll back when the logged KL to the reference (``kl/approx``) exceeds this (off unless set)."""

    def checks(self, has_eval: bool, has_reference: bool, save_steps: int) -> list[tuple[bool, str, str]]:
        """(bad, field, message) for the guard settings, for ``RunConfig.validate``."""
        watched = self.eval_accuracy_drop is not None or self.max_kl is not None
        return [
            (self.max_bad_steps < 0, "guard.max_bad_steps", "must be ≥ 0 (0: never roll back on bad steps)"),
            (not 0 < self.lr_factor <= 1, "guard.lr_factor", "must be in (0, 1]"),
            (self.max_rollbacks < 0, "guard.max_rollbacks", "must be ≥ 0"),
            (self.eval_accuracy_drop is not None and not 0 < self.eval_accuracy_drop <= 1,
             "guard.eval_accuracy_drop", "must be in (0, 1]"),
            (self.eval_accuracy_drop is not None and not has_eval, "guard.eval_accuracy_drop",
             "watches held-out accuracy: give --eval-data and --eval-steps"),
            (self.max_kl is not None and not self.max_kl > 0, "guard.max_kl", "must be > 0"),
            (self.max_kl is not None and not has_reference, "guard.max_kl",
             "watches the KL to the reference, and this run has none"),
            (watched and self.enabled and save_steps < 1, "train.save_steps",
             "must be ≥ 1 when guard.eval_accuracy_drop or guard.max_kl is set: a rollback needs checkpoints"),
        ]
