"""DPO on data with ties (Chen et al. 2024, "On extending direct preference optimization to
accommodate ties"): the Bradley–Terry model behind DPO replaced by one with a third outcome,
the tie, in its Rao–Kupper or Davidson form. A pair judged better/worse pays −log P(y_w ≻ y_l),
a tied pair −log P(tie); both use d = β·u of the implicit rewards, as DPO does.

Notation as in ``dpo.py``. A tied pair's two answers come in no particular order: both tie
probabilities are symmetric in d, so the order does not matter. Reward accuracy is NaN on ties.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, log_ratios, masked, register, reward_metrics


def _pieces(policy: Logps, reference: Logps, cfg, ctx: LossContext | None) -> tuple[Tensor, Tensor, dict]:
    """(d = β·u, the (B,) tie indicator, reward metrics with accuracy NaN on ties)."""
    r = cfg.beta * log_ratios(policy, reference)
    d = r[0] - r[1]
    ties = ctx.ties if ctx is not None and ctx.ties is not None else torch.zeros_like(d, dtype=torch.bool)
    metrics = reward_metrics(r[0], r[1])
    metrics["rewards/accuracies"] = masked(metrics["rewards/accuracies"], ~ties)
    return d, ties.to(d.device), metrics


@register("dpo_rk", needs_reference=True, input_kind="pair", takes_ties=True,
          params=(BETA, Param("rk_nu", allowed="(1, inf)")))
def dpo_rk(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """DPO-RK: DPO that trains on ties too, by the Rao–Kupper model.

    P(y_w ≻ y_l) = σ(d − log ν), P(tie) = (ν² − 1)·σ(d − log ν)·σ(−d − log ν).

    (Rao & Kupper 1967 with strengths e^{β·r}, as in Chen et al. 2024: λ_w / (λ_w + ν·λ_l) for a
    win; the three outcomes sum to 1.) ν = ``rk_nu`` > 1 sets how likely ties are: at d = 0
    P(tie) = (ν − 1)/(ν + 1). Our default ν = 2 makes win, loss and tie equally likely (⅓ each)
    while the policy equals the reference. ν → 1 leaves no room for ties and the non-tied loss
    is DPO's −log σ(d).
    Worked example: β = 0.1, u = 10 (d = 1), ν = 2: non-tied −log σ(1 − log 2) = 0.551445;
    tied −log 3 − log σ(0.306853) − log σ(−1.693147) = −1.098612 + 0.551445 + 1.861995 = 1.314827.
    """
    d, ties, metrics = _pieces(policy, reference, cfg, ctx)
    log_nu = math.log(cfg.rk_nu)
    win = -logsigmoid(d - log_nu)
    room = cfg.rk_nu ** 2 - 1  # 0 at ν = 1, the limit with no ties (then P(tie) = 0)
    tie = win - logsigmoid(-d - log_nu) - (math.log(room) if room > 0 else -math.inf)
    metrics["tie/probability"] = torch.exp(-tie).detach()
    return LossOutput(torch.where(ties, tie, win), metrics)


@register("dpo_davidson", needs_reference=True, input_kind="pair", takes_ties=True,
          params=(BETA, Param("davidson_nu", allowed="(0, inf)")))
def dpo_davidson(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """DPO-D: DPO that trains on ties too, by the Davidson model.

    P(y_w ≻ y_l) = 1/(1 + e^{−d} + ν·e^{−d/2}), P(tie) = ν/(e^{d/2} + e^{−d/2} + ν).

    (Davidson 1970 with strengths λ = e^{β·r}: a tie has weight ν·√(λ_w·λ_l), as in Chen et al.
    2024.) ν = ``davidson_nu`` > 0: at d = 0 P(tie) = ν/(2 + ν). Our default ν = 1 makes the
    three outcomes equally likely while the policy equals the reference. ν → 0 gives DPO.
    Computed as log-sum-exps, stable for large |d|.
    Worked example: β = 0.1, u = 10 (d = 1), ν = 1: non-tied log(1 + e^−1 + e^−0.5) = 0.680270;
    tied log(e^0.5 + e^−0.5 + 1) = log 3.255252 = 1.180270.
    """
    d, ties, metrics = _pieces(policy, reference, cfg, ctx)
    log_nu = torch.full_like(d, math.log(cfg.davidson_nu) if cfg.davidson_nu > 0 else -math.inf)
    win = torch.logsumexp(torch.stack([torch.zeros_like(d), -d, log_nu - d / 2]), 0)
    tie = torch.logsumexp(torch.stack([d / 2, -d / 2, log_nu]), 0) - log_nu
    metrics["tie/probability"] = torch.exp(-tie).detach()
    return LossOutput(torch.where(ties, tie, win), metrics)
