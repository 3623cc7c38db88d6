"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from dpokit.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class ProximalTerm:
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", eq. 2): the local
    objective plus μ/2·‖θ − θ₀‖², θ₀ the trainable weights the run started from. Its gradient,
    μ·(θ − θ₀), is added to each weight's gradient after the backward passes (and before clipping),
    so it acts on any loss and any policy kind alike."""

    def __init__(self, params, mu: float):
        self.mu = mu
        self.pairs = [(p, p.detach().clone()) for p in params if p.requires_grad]

    @torch.no_grad()
    def add_gradient(self) -> None:
        for param, anchor in self.pairs:
            if param.grad is not None:
                param.grad.add_(param.detach() - anchor, alpha=self.mu)


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    Warm-up rises linearly as (step+1)/(warmup+1), so no step is spent at lr 0; the decay
    then runs from 1 towards 0 at ``total``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    return 1.0


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.scheduler))


def set_lr_scale(optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float, scale: float) -> None:
    """Make the peak learning rate ``lr × scale`` from the current step on (the schedule's shape
    is kept); the scheduler's state, saved in every checkpoint, carries the new peak."""
    scheduler.base_lrs = [lr * scale for _ in optimizer.param_groups]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class LossScaling:
    """fp16's dynamic loss scale, so that small gradients survive fp16's narrow range; in fp32
    and bf16 every method is a plain pass-through. A step whose scaled gradients overflowed
    (finite loss, non-finite gradient norm) is the scaler's, not a bad step: the scale is
    lowered and the step skipped, as torch's AMP recipe does."""

    def __init__(self, scaler: torch.amp.GradScaler | None):
        self.scaler = scaler

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer) -> None:
        """Before clipping: the gradients back in their own units."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def overflowed(self, loss: float, grad_norm) -> bool:
        if self.scaler is None or not math.isfinite(loss) or math.isfinite(float(grad_norm)):
            return False
        self.scaler.update()  # lowers the scale; unscale_ recorded the overflow
        return True

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    @property
    def value(self) -> float | None:
        return None if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
