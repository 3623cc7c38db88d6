"""Guards: what the loop does when a step goes wrong or a watched metric collapses.

- A step whose loss or gradient norm is NaN or infinite is skipped: the optimizer does not step,
  the gradients are dropped, the step does not count, and ``guard/skipped_steps`` goes up.
- After ``max_bad_steps`` skipped steps in a row, or when a watched metric collapses (held-out
  reward accuracy falling more than ``eval_accuracy_drop`` below its best, ``kl/approx`` above
  ``max_kl``), the run rolls back to the newest verified checkpoint (weights, optimizer, schedule,
  data position, RNG), multiplies the learning rate by ``lr_factor`` for the rest of the run, logs a
  line and a ``{"event": "rollback", ...}`` record in metrics.jsonl, and goes on.

The counters live in ``TrainState.guard`` and the lowered learning rate in ``TrainState.lr_scale``,
so both are saved in every checkpoint and survive ``--resume``.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path

import torch

from dpokit.config.guard import GuardConfig
from dpokit.errors import UserError
from dpokit.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint
from dpokit.train.optim import set_lr_scale

ACCURACY, KL = "eval/rewards/accuracies", "kl/approx"


class Action(enum.Enum):
    OK = "ok"
    SKIP = "skip"
    ROLLBACK = "rollback"


class Guard:
    """Decides, step by step, whether to apply, skip or roll back. Every process reaches the same
    decision: it reads only values already reduced over processes."""

    def __init__(self, cfg: GuardConfig, state: TrainState) -> None:
        self.cfg = cfg
        self.bad_in_a_row = 0
        self.reason = ""
        self.attach(state)

    def attach(self, state: TrainState) -> None:
        """Keep the counters in ``state`` (after a resume or a rollback, the state loaded)."""
        self.counters = state.guard
        self.counters.setdefault("skipped_steps", 0)
        self.counters.setdefault("rollbacks", 0)

    @property
    def skipped(self) -> int:
        return self.counters["skipped_steps"]

    def check_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> Action:
        """After the backward passes, before the optimizer step. ``loss`` and ``grad_norm`` are
        the step's values summed over processes."""
        if not self.cfg.enabled:
            return Action.OK
        if math.isfinite(float(loss)) and math.isfinite(float(grad_norm)):
            self.bad_in_a_row = 0
            return Action.OK
        self.bad_in_a_row += 1
        self.counters["skipped_steps"] += 1
        self.reason = (f"{self.bad_in_a_row} consecutive steps with a non-finite loss or gradient "
                       f"(loss {float(loss)}, grad norm {float(grad_norm)})")
        if self.cfg.max_bad_steps and self.bad_in_a_row >= self.cfg.max_bad_steps:
            return Action.ROLLBACK
        return Action.SKIP

    def check_metrics(self, metrics: dict) -> Action:
        """After logging and evaluation, with the metrics just measured (train and ``eval/`` ones)."""
        g = self.cfg
        if not g.enabled:
            return Action.OK
        kl = metrics.get(KL)
        if g.max_kl is not None and kl is not None and not kl <= g.max_kl:
            self.reason = f"{KL} {kl:.4g} is above guard.max_kl {g.max_kl:g}"
            return Action.ROLLBACK
        accuracy = metrics.get(ACCURACY)
        if g.eval_accuracy_drop is not None and accuracy is not None:
            best = self.counters.get("best_eval_accuracy")
            if best is not None and not accuracy >= best - g.eval_accuracy_drop:
                self.reason = (f"{ACCURACY} fell to {accuracy:.4g} from its best {best:.4g} "
                               f"(more than guard.eval_accuracy_drop {g.eval_accuracy_drop:g})")
                return Action.ROLLBACK
            if best is None or accuracy > best:
                self.counters["best_eval_accuracy"] = accuracy
        return Action.OK

    def roll_back(self, output: Path, state: TrainState, model, optimizer, scheduler, lr: float,
                  log, metrics_log, engine=None, reference=None) -> TrainState:
        """Load the newest verified checkpoint, lower the learning rate, and return its state
        (carrying this run's counters); raise a UserError when there is nothing to roll back to."""
        done = self.counters["rollbacks"]
        if done >= self.cfg.max_rollbacks:
            raise UserError(f"{self.reason} at step {state.step}, after {done} rollbacks "
                            f"(guard.max_rollbacks); the checkpoints in {output} are intact",
                            where="guard", field="guard.max_rollbacks")
        ckpt = latest_checkpoint(output, log)
        if ckpt is None:
            raise UserError(f"{self.reason} at step {state.step}, and there is no checkpoint to roll back to "
                            "(save some with --save-steps)", where="guard")
        loaded = load_checkpoint(ckpt, model, optimizer, scheduler, engine, reference)
        loaded.guard = {**self.counters, "rollbacks": done + 1}
        loaded.lr_scale = state.lr_scale * self.cfg.lr_factor
        set_lr_scale(optimizer, scheduler, lr, loaded.lr_scale)
        self.attach(loaded)
        self.bad_in_a_row = 0
        log(f"[guard] {self.reason} at step {state.step}: rolled back to {ckpt.name}, "
            f"learning rate now {loaded.lr_scale:g} × {lr:g}")
        metrics_log.write({"event": "rollback", "step": state.step, "to_step": loaded.step, "checkpoint": str(ckpt),
                           "reason": self.reason, "lr_scale": loaded.lr_scale, "rollbacks": done + 1})
        return loaded
