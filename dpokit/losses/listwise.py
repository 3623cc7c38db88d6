"""Listwise losses over k ranked answers per prompt (row 0 best, row k−1 worst).

s_i = β·(log π(y_i|x) − log π_ref(y_i|x)) is each answer's implicit reward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, log_ratios, register


def list_metrics(s: Tensor) -> dict[str, Tensor]:
    """rewards/chosen: the best answer; rewards/rejected: mean of the others; accuracy: the
    fraction of the k(k−1)/2 answer pairs whose rewards are in the labelled order."""
    s = s.detach()
    k = s.shape[0]
    i, j = torch.triu_indices(k, k, offset=1)
    rest = s[1:].mean(0)
    return {"rewards/chosen": s[0], "rewards/rejected": rest, "rewards/margins": s[0] - rest,
            "rewards/accuracies": (s[i] > s[j]).float().mean(0)}


@register("plackett_luce", needs_reference=True, input_kind=("list", "pair"), params=(BETA,))
def plackett_luce(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """Plackett–Luce DPO: the likelihood of the whole ranking of k answers.

    (Rafailov 2023, appendix A.3.) The negative log-likelihood of the ranking under a
    Plackett–Luce model of the implicit rewards,
      L = −Σ_{i=1}^{k−1} [s_i − log Σ_{j ≥ i} exp(s_j)].
    With k = 2 this is DPO: −(s_1 − log(e^{s_1} + e^{s_2})) = −log σ(s_1 − s_2).
    Worked example: s = (1, 0, −1): −[1 − log(e + 1 + e^−1)] − [0 − log(1 + e^−1)]
    = 0.407606 + 0.313262 = 0.720868.
    """
    s = cfg.beta * log_ratios(policy, reference)
    tail_lse = torch.logcumsumexp(s.flip(0), dim=0).flip(0)  # log Σ_{j ≥ i} exp(s_j)
    losses = (tail_lse - s)[:-1].sum(0)
    return LossOutput(losses, list_metrics(s))


@register("softmax_dpo", needs_reference=True, input_kind=("list", "pair"), params=(BETA,))
def softmax_dpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """S-DPO: the best answer against all k−1 others in one softmax (Chen 2024, eq. 11).

      L = −log σ(−log Σ_{j ≥ 2} exp(s_j − s_1)).
    With one negative this is DPO. Worked example: s = (1, 0, −1):
    log(e^−1 + e^−2) = −0.686738, L = −log σ(0.686738) = 0.407606 (the first term of Plackett–Luce).
    """
    s = cfg.beta * log_ratios(policy, reference)
    losses = -logsigmoid(-torch.logsumexp(s[1:] - s[0], dim=0))
    return LossOutput(losses, list_metrics(s))


def relevance(labels: Tensor | None, like: Tensor) -> Tensor:
    """(k, B) graded relevance ψ: the list's scores min–max scaled to [0, k−1], or k−1−rank
    when the data gives only the order."""
    k, n = like.shape
    if labels is None:
        return torch.arange(k - 1, -1, -1, dtype=like.dtype, device=like.device).unsqueeze(1).expand(k, n)
    psi = labels.T.to(like.dtype)
    lo, hi = psi.min(0).values, psi.max(0).values
    return (psi - lo) / (hi - lo).clamp(min=1e-12) * (k - 1)


@register("lipo", needs_reference=True, input_kind=("list", "pair"), params=(BETA,))
def lipo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """LiPO-λ: pairwise logistic losses weighted by LambdaRank's λ weights (Liu 2024, eq. 9).

      L = Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(s_i − s_j))),
      Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|,  G = 2^ψ − 1,  D(τ) = log2(1 + τ),
    where ψ is each answer's graded relevance (see ``relevance``) and τ its rank when the
    list is sorted by the current rewards s (1 = highest; not differentiated). Swapping two
    answers near the top costs more than swapping two near the bottom.
    Worked example: k = 2, ψ = (1, 0), s = (0, 0): G = (1, 0); ties in s keep list order, so
    τ = (1, 2), D = (1, 1.584963), Δ = 1·(1 − 0.630930) = 0.369070, L = 0.369070·log 2 = 0.255820.
    """
    s = cfg.beta * log_ratios(policy, reference)
    k, n = s.shape
    labels = ctx.labels if ctx is not None and ctx.labels is not None and ctx.labels.shape[1] == k else None
    psi = relevance(labels, s)
    gain = torch.pow(2.0, psi) - 1
    order = torch.argsort(s.detach(), dim=0, descending=True, stable=True)
    tau = torch.empty_like(order).scatter_(0, order, torch.arange(1, k + 1, device=s.device).unsqueeze(1).expand(k, n))
    inv_discount = 1 / torch.log2(1 + tau.to(s.dtype))
    delta = (gain[:, None] - gain[None, :]).abs() * (inv_discount[:, None] - inv_discount[None, :]).abs()
    better = (psi[:, None] > psi[None, :]).to(s.dtype)  # (k, k, B): i labelled above j
    pair_loss = -logsigmoid(s[:, None] - s[None, :])
    losses = (better * delta * pair_loss).sum((0, 1))
    return LossOutput(losses, list_metrics(s))
