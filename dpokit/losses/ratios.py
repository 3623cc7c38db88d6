"""DPO variants that reshape the log ratios before DPO's sigmoid: f-DPO (the ratio through the
derivative of an f-divergence) and LD-DPO (the log-probs of the longer answer's excess tokens
scaled down). Notation as in ``dpo.py``: r_w, r_l the chosen and rejected log ratios
log π(y|x) − log π_ref(y|x), u = r_w − r_l; rewards β·r."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dpokit.logps import Logps
from dpokit.losses.base import (BETA, LABEL_SMOOTHING, LossContext, LossOutput, Param, log_ratios, register,
                                reward_metrics, sigmoid_xent)


def f_prime(divergence: str, r: Tensor, alpha: float) -> Tensor:
    """f'(π/π_ref) up to an additive constant (it cancels in the chosen − rejected difference),
    written in the log ratio r = log(π/π_ref).

    reverse KL f(t) = t·log t:                f'(t) = log t + 1          → r
    forward KL f(t) = −log t:                 f'(t) = −1/t               → −e^{−r}
    Jensen–Shannon f(t) = t·log t − (t + 1)·log((t + 1)/2):
                                              f'(t) = log(2t/(1 + t))    → log σ(r)
    α-divergence f(t) = (t^{1−α} − (1 − α)·t − α)/(α(α − 1)):
                                              f'(t) = (1 − t^{−α})/α     → −e^{−α·r}/α
    The exponent of e^{−α·r} is capped at the float's largest finite exponent, so a very unlikely
    answer gives a large finite value, not infinity.
    """
    if divergence == "reverse_kl":
        return r
    if divergence == "js":
        return torch.nn.functional.logsigmoid(r)
    if divergence in ("forward_kl", "alpha"):
        a = 1.0 if divergence == "forward_kl" else alpha
        cap = math.log(torch.finfo(r.dtype).max) - 1
        return -torch.exp(torch.clamp(-a * r, max=cap)) / a
    raise ValueError(f"unknown fdpo_divergence {divergence!r}")


@register("fdpo", needs_reference=True, input_kind="pair",
          params=(BETA, LABEL_SMOOTHING, Param("fdpo_divergence"), Param("fdpo_alpha", allowed="(0, 1]")))
def fdpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """f-DPO: DPO with the reverse KL of its regulariser replaced by another f-divergence.

    L = −(1−ε)·log σ(β·[f'(t_w) − f'(t_l)]) − ε·log σ(−β·[f'(t_w) − f'(t_l)]),  t = π(y|x)/π_ref(y|x)
    (Wang et al. 2023, "Beyond reverse KL: generalizing direct preference optimization with
    diverse divergence constraints", Theorem 1: the reward of the f-regularised objective is
    β·f'(t) + const.) ``fdpo_divergence``: reverse_kl (DPO itself), forward_kl, js (Jensen–Shannon)
    or alpha (α-divergence, α = ``fdpo_alpha`` in (0, 1]; α → 0 is reverse KL, α = 1 forward KL).
    Rewards are β·r, DPO's, for every divergence (comparable across runs).
    Worked example: β = 0.1, r_w = 1, r_l = −1: reverse_kl −log σ(0.2) = 0.598139;
    forward_kl −log σ(0.1·(e^1 − e^−1)) = −log σ(0.235040) = 0.582517;
    js −log σ(0.1·(log σ(1) − log σ(−1))) = −log σ(0.1) = 0.644397 (log σ(r) − log σ(−r) = r);
    alpha α = 0.5: −log σ(0.1·(e^0.5 − e^−0.5)/0.5) = −log σ(0.208438) = 0.594349.
    """
    r = log_ratios(policy, reference)
    g = f_prime(cfg.fdpo_divergence, r, cfg.fdpo_alpha)
    losses = sigmoid_xent(cfg.beta * (g[0] - g[1]), 1.0 - cfg.label_smoothing)
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))


def desensitised(logps: Logps, alpha: float) -> Tensor:
    """(G, B) log-probs with the tokens past the pair's shorter answer scaled by α:
    Σ_{t ≤ ℓ} log π(y_t|·) + α·Σ_{t > ℓ} log π(y_t|·), ℓ = min(|y_w|, |y_l|) of each pair."""
    position = logps.mask.cumsum(-1)  # 1, 2, ... at each answer's tokens, wherever they sit in the row
    shared = logps.count.min(0).values  # (B,)
    past = (position > shared[None, :, None]) & logps.mask
    return logps.tokens.sum(-1) - (1 - alpha) * (logps.tokens * past).sum(-1)  # α in the tokens' own precision


@register("ld_dpo", needs_reference=True, input_kind="pair",
          params=(BETA, LABEL_SMOOTHING, Param("ld_alpha", allowed="[0, 1]")))
def ld_dpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """LD-DPO: DPO on log-probs in which the longer answer's excess tokens count α times.

    L = −(1−ε)·log σ(β·û) − ε·log σ(−β·û),
    û = [log π̂(y_w) − log π̂_ref(y_w)] − [log π̂(y_l) − log π̂_ref(y_l)],
    log π̂(y) = Σ_{t ≤ ℓ} log π(y_t|x, y_<t) + α·Σ_{t > ℓ} log π(y_t|x, y_<t), ℓ = min(|y_w|, |y_l|)
    (Liu et al. 2024, "Length desensitization in direct preference optimization": the shared
    length counts fully, the verbose rest is damped, for the policy and the reference alike.)
    α = ``ld_alpha`` in [0, 1]: 1 is DPO, 0 compares only the first ℓ tokens of each answer.
    Our default 0.5; the paper tunes α per model. Rewards are β times the desensitised ratios.
    Worked example: β = 0.1, α = 0.5, chosen tokens (−1, −2, −3), rejected (−1), reference 0:
    log π̂(y_w) = −1 + 0.5·(−5) = −3.5, û = −3.5 + 1 = −2.5, L = log(1 + e^0.25) = 0.825939.
    """
    r = desensitised(policy, cfg.ld_alpha) - desensitised(reference, cfg.ld_alpha)
    losses = sigmoid_xent(cfg.beta * (r[0] - r[1]), 1.0 - cfg.label_smoothing)
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))
