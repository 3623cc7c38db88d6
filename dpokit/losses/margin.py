"""Losses that pull the margin u towards a target instead of through a sigmoid: IPO, hinge
(SLiC), and RSO's normalised forms. Notation as in ``dpo.py``."""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, log_ratios, register, reward_metrics


@register("ipo", needs_reference=True, input_kind="pair", params=(BETA, Param("ipo_average")))
def ipo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """IPO: (u − 1/(2β))², a squared loss with a finite target margin (Azar 2023, eq. 17, τ = β).

    DPO's sigmoid keeps pushing u up even on pairs it already ranks right, which over-fits
    deterministic preferences; IPO regresses u onto 1/(2β). By default u uses per-token mean
    log-probs (``ipo_average``, as TRL does: summed log-probs of long answers make u large and
    the target 1/(2β) relatively tiny); set it false for the paper's summed form.
    Rewards are β·(log ratio) in the same normalisation, so the target margin is 0.5.
    Worked example (β = 0.1, summed): u = 1 → (1 − 5)² = 16. Averaged: chosen tokens
    (−1, −2) vs ref (−2, −2), rejected (−3) vs ref (−1): u = (−1.5 + 2) − (−3 + 1) = 2.5,
    L = (2.5 − 5)² = 6.25.
    """
    pol, ref = (policy.mean, reference.mean) if cfg.ipo_average else (policy.sum, reference.sum)
    r = pol - ref
    losses = (r[0] - r[1] - 1 / (2 * cfg.beta)) ** 2
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))


@register("hinge", needs_reference=True, input_kind="pair", params=(Param("hinge_margin", allowed="(0, inf)"),))
def hinge(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """SLiC-HF calibration loss: max(0, δ − u), δ = ``hinge_margin`` (default 1, as in Zhao 2023).

    SLiC compares the policy's own sequence log-likelihoods; here, as in the RSO paper's
    unified view, they are measured against the reference, which is the same up to a
    per-pair constant. SLiC's regulariser (NLL on a target sequence) is
    ``--loss hinge,nll:λ``. Rewards are the unscaled log ratios u is made of.
    Worked example: δ = 1, u = 0.25 → 0.75; u = 2 → 0.
    """
    r = policy.sum - reference.sum
    losses = torch.clamp(cfg.hinge_margin - (r[0] - r[1]), min=0)
    return LossOutput(losses, reward_metrics(r[0], r[1]))


@register("rso", needs_reference=True, input_kind="pair",
          params=(Param("rso_gamma", allowed="(0, inf)"), Param("rso_norm")))
def rso(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """RSO: hinge-norm max(0, 1 − γ·u) (default) or sigmoid-norm −log σ(γ·u) (Liu 2023).

    (Eq. 9–10 of the paper), γ = ``rso_gamma`` (default 0.05).

    The paper pairs these with pairs drawn by statistical rejection sampling from the
    estimated optimal policy (the sampler belongs to online training); on offline pairs this
    is the loss alone. Rewards are γ·(log ratio).
    Worked example: γ = 0.05, u = 4: hinge-norm 1 − 0.2 = 0.8; sigmoid-norm log(1 + e^−0.2) = 0.598139.
    """
    r = cfg.rso_gamma * (policy.sum - reference.sum)
    z = r[0] - r[1]
    losses = torch.clamp(1 - z, min=0) if cfg.rso_norm == "hinge" else -logsigmoid(z)
    return LossOutput(losses, reward_metrics(r[0], r[1]))


def _gpo_convex(name: str, x: torch.Tensor) -> torch.Tensor:
    """The convex functions f of GPO, each decreasing through f'(0) < 0 (so the chosen answer is preferred)."""
    if name == "logistic":
        return -logsigmoid(x)  # log(1 + e^−x)
    if name == "hinge":
        return torch.clamp(1 - x, min=0)
    if name == "squared":
        return (x - 1) ** 2
    if name == "exponential":
        return torch.exp(-x)
    if name == "truncated_quadratic":
        return torch.clamp(1 - x, min=0) ** 2
    if name == "savage":
        return torch.sigmoid(-x) ** 2  # 1 / (1 + e^x)²
    raise ValueError(f"unknown gpo_fn {name!r}")


@register("gpo", needs_reference=True, input_kind="pair", params=(BETA, Param("gpo_fn")))
def gpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """GPO: a convex function f of the scaled margin, L = f(β·u), f = ``gpo_fn``.

    (Tang et al. 2024, "Generalized preference optimization: a unified approach to offline
    alignment", §2: offline losses E[f(β·ρ_θ)] with ρ_θ = u.) f is one of logistic
    log(1 + e^−x) (DPO), hinge max(0, 1 − x) (SLiC), squared (x − 1)² (IPO), exponential e^−x,
    truncated_quadratic max(0, 1 − x)², savage 1/(1 + e^x)². Default logistic.
    How they meet the other losses here (summed log-probs throughout):
      logistic at β            = ``sigmoid`` at β;
      hinge at β = 1/δ         = ``hinge`` with margin δ, divided by δ (equal at β = δ = 1);
      squared at β             = β²·``ipo`` at β/2 with ``ipo_average`` false (equal at β = 1, IPO β = 0.5).
    Rewards are β·(log ratio).
    Worked example: β = 0.1, u = 5 (x = 0.5): logistic 0.474077, hinge 0.5, squared 0.25,
    exponential 0.606531, truncated_quadratic 0.25, savage σ(−0.5)² = 0.377541² = 0.142537.
    """
    r = log_ratios(policy, reference)
    losses = _gpo_convex(cfg.gpo_fn, cfg.beta * (r[0] - r[1]))
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))
