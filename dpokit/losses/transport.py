"""AOT: alignment via optimal transport, a distributional loss over the whole batch.

Instead of asking every pair for a positive margin, AOT asks the distribution of chosen
rewards to dominate that of rejected rewards (first-order stochastic dominance). In one
dimension the optimal transport between two empirical distributions matches them in sorted
order, so the loss compares the i-th smallest of one batch quantity with the i-th smallest
of the other. Notation as in ``dpo.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpokit.logps import Logps
from dpokit.losses.base import (BETA, LABEL_SMOOTHING, LossContext, LossOutput, log_ratios, register, reward_metrics,
                                sigmoid_xent)


def _sorted_loss(top: Tensor, bottom: Tensor, cfg) -> Tensor:
    """(B,) smoothed logistic loss of β·(sort(top) − sort(bottom)), position by position."""
    delta = torch.sort(top).values - torch.sort(bottom).values
    return sigmoid_xent(cfg.beta * delta, 1.0 - cfg.label_smoothing)


@register("aot", needs_reference=True, input_kind="pair", batch_stats=True, params=(BETA, LABEL_SMOOTHING))
def aot(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """AOT (paired): the policy's sorted log-likelihood margins against the reference's sorted ones.

    With m_i = log π(y_w|x_i) − log π(y_l|x_i) and m_i^ref the same under π_ref over the batch,
    and m_(i) the i-th smallest: L_(i) = −(1−ε)·log σ(β·(m_(i) − m_(i)^ref)) − ε·log σ(−β·(m_(i) − m_(i)^ref))
    (Melnyk et al. 2024, "Distributional preference alignment of LLMs via optimal transport":
    the sorted, logistic form of its paired stochastic-dominance loss; ε = label smoothing, 0
    by default.) A batch of one pair is DPO. The per-example losses belong to sorted
    positions, not to records, so record weights other than 1 do not follow their records;
    the batch (the micro-batch, on each process) is what is sorted, so accumulation changes it.
    Worked example: β = 1, margins m = (2, −1), m^ref = (0, 1): sorted m (−1, 2), m^ref (0, 1),
    Δ = (−1, 1), L = (log(1 + e), log(1 + e^−1)) = (1.313262, 0.313262); plain DPO would pair
    2 − 0 and −1 − 1: (0.126928, 2.126928).
    """
    r = log_ratios(policy, reference)
    losses = _sorted_loss(policy.sum[0] - policy.sum[1], reference.sum[0] - reference.sum[1], cfg)
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))


@register("aot_unpaired", needs_reference=True, input_kind="pair", batch_stats=True, params=(BETA, LABEL_SMOOTHING))
def aot_unpaired(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """AOT (unpaired): the sorted chosen log ratios against the sorted rejected ones.

    L_(i) = −(1−ε)·log σ(β·(r_w,(i) − r_l,(i))) − ε·log σ(−β·(r_w,(i) − r_l,(i)))
    (Melnyk et al. 2024, the unpaired form: chosen and rejected answers need not share
    prompts, only the two reward distributions are compared.) Same remarks on sorting as ``aot``.
    Worked example: β = 1, r_w = (0, 3), r_l = (1, −1): sorted (0, 3) and (−1, 1), Δ = (1, 2),
    L = (log(1 + e^−1), log(1 + e^−2)) = (0.313262, 0.126928).
    """
    r = log_ratios(policy, reference)
    return LossOutput(_sorted_loss(r[0], r[1], cfg), reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))
