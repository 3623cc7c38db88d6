"""Losses that pull the margin u towards a target instead of through a sigmoid: IPO, hinge
(SLiC), and RSO's normalised forms. Notation as in ``dpo.py``."""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, register, reward_metrics


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
