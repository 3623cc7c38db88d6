"""Pair losses that look at each answer's log ratio on its own, not only at their difference:
EXO, NCA, BCO, SPPO (hard labels), APO, and DiscoPOP's discovered blend of two margin losses.

Notation as in ``dpo.py``: r_w, r_l = log π(y|x) − log π_ref(y|x) of the chosen and rejected
answer (summed token log-probs), u = r_w − r_l. Rewards are β·r unless a docstring says otherwise.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, log_ratios, register, reward_metrics


def _rewards(policy: Logps, reference: Logps, beta: float):
    r = log_ratios(policy, reference)
    return r, reward_metrics(beta * r[0], beta * r[1])


@register("exo_pair", needs_reference=True, input_kind="pair",
          params=(BETA, Param("exo_epsilon", allowed="(0, 0.5)")))
def exo_pair(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """EXO: the reverse KL from the policy's pair distribution to a smoothed preference label.

    L = KL(p_θ ‖ p_ε) = σ(βu)·[log σ(βu) − log(1 − ε)] + σ(−βu)·[log σ(−βu) − log ε]
    (Ji et al. 2024, "Towards efficient exact optimization of language model alignment",
    eq. 16 with K = 2 answers): p_θ = softmax over the pair of β·r, p_ε = (1 − ε, ε) the label.
    DPO minimises the forward KL KL(p_ε ‖ p_θ) (cross-entropy, mass-covering); EXO the reverse
    one (mode-seeking). ε > 0 is needed (log ε); default ε = 0.001 (``exo_epsilon``, the
    paper's value). The minimum 0 is at σ(βu) = 1 − ε, a finite margin.
    Worked example: β = 0.1, u = 0 (policy = reference): σ = 0.5 each,
    L = 0.5·(log 0.5 − log 0.999) + 0.5·(log 0.5 − log 0.001) = −0.346073 + 3.107304 = 2.761231.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    z, eps = cfg.beta * (r[0] - r[1]), cfg.exo_epsilon
    losses = (torch.sigmoid(z) * (logsigmoid(z) - math.log1p(-eps))
              + torch.sigmoid(-z) * (logsigmoid(-z) - math.log(eps)))
    return LossOutput(losses, metrics)


@register("nca_pair", needs_reference=True, input_kind="pair", params=(BETA,))
def nca_pair(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """NCA: noise-contrastive alignment, each answer's own reward classified against a constant.

    L = −log σ(β·r_w) − ½·log σ(−β·r_w) − ½·log σ(−β·r_l)
    (Chen et al. 2024, "Noise contrastive alignment of language models with explicit rewards",
    the NCA loss for K = 2 answers with the preferred one's label 1.) Unlike DPO, which only
    moves the margin, NCA pins absolute rewards: the chosen answer's r_w is pushed up (its
    optimum −log σ − ½·log σ(−·) sits at β·r_w = log 2), the rejected answer's down, so the
    chosen likelihood does not fall with the rejected one.
    Worked example: β = 0.1, r_w = 0, r_l = 0: L = log 2 + ½·log 2 + ½·log 2 = 2·log 2 = 1.386294;
    r_w = 10, r_l = −10: −log σ(1) − ½·log σ(−1) − ½·log σ(1)
    = 0.313262 + 0.656631 + 0.156631 = 1.126523.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    w, lose = cfg.beta * r[0], cfg.beta * r[1]
    losses = -logsigmoid(w) - 0.5 * logsigmoid(-w) - 0.5 * logsigmoid(-lose)
    return LossOutput(losses, metrics)


def _update_delta(state: dict, batch_mean: float) -> float:
    """δ: the running mean of the training batches' mean reward, each batch counted once."""
    n = state.get("bco/batches", 0) + 1
    delta = state.get("bco/delta", 0.0)
    state["bco/delta"], state["bco/batches"] = delta + (batch_mean - delta) / n, n
    return state["bco/delta"]


@register("bco_pair", needs_reference=True, input_kind="pair", batch_stats=True, params=(BETA,))
def bco_pair(policy: Logps, reference: Logps, cfg, ctx: LossContext) -> LossOutput:
    """BCO: a binary classifier on each answer, chosen → 1, rejected → 0, logit β·r − δ.

    L = −log σ(β·r_w − δ) − log σ(−(β·r_l − δ))
    (Jung et al. 2024, "Binary classifier optimization for large language model alignment":
    the BCE loss, an upper bound of the DPO loss, with the reward shift δ that tightens it.)
    δ is the running mean of the rewards β·r of both answers: each training batch's mean
    (over the global batch on several processes) joins the average before use, every batch
    weighted equally; it is not differentiated. It lives in the loss state and is saved with
    checkpoints, so resuming is exact; evaluation batches read it without updating it (before
    any training batch they use their own mean). Reported as ``bco/delta``.
    Worked example: β = 0.1, first batch of one pair r_w = 3, r_l = −1: δ = (0.3 − 0.1)/2 = 0.1,
    L = −log σ(0.2) − log σ(−(−0.2)) = 2·0.598139 = 1.196278.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    rewards = cfg.beta * r
    mean = ctx.gather(rewards.detach().mean(0)).mean().item()
    delta = _update_delta(ctx.state, mean) if ctx.training else ctx.state.get("bco/delta", mean)
    losses = -logsigmoid(rewards[0] - delta) - logsigmoid(-(rewards[1] - delta))
    metrics["bco/delta"] = torch.full_like(rewards[0].detach(), delta)
    return LossOutput(losses, metrics)


@register("sppo_hard", needs_reference=True, input_kind="pair", params=(BETA,))
def sppo_hard(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """SPPO with hard labels: each log ratio regressed onto ±1/(2β).

    L = (r_w − 1/(2β))² + (r_l + 1/(2β))²
    (Wu et al. 2024, "Self-play preference optimization for language model alignment",
    eq. 4.7 / Algorithm 1 with the win probability P(y_w ≻ π) = 1 for the chosen answer and 0
    for the rejected one: the target of r is (P − ½)/β.) The paper estimates P with a
    preference model over samples of the current policy; on offline pairs the hard labels
    stand in for it. Rewards β·r, so the targets are ±0.5.
    Worked example: β = 0.1, r_w = 1, r_l = −1: (1 − 5)² + (−1 + 5)² = 32.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    target = 0.5 / cfg.beta
    return LossOutput((r[0] - target) ** 2 + (r[1] + target) ** 2, metrics)


@register("apo_zero", needs_reference=True, input_kind="pair", params=(BETA,))
def apo_zero(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """APO-zero: raise the chosen answer's reward and lower the rejected one's, each on its own.

    L = 1 − σ(β·r_w) + σ(β·r_l)
    (D'Oosterlinck et al. 2024, "Anchored preference optimization and contrastive revisions",
    eq. 7.) For data whose chosen answers are better than what the model writes now: the
    likelihood of y_w goes up in absolute terms, not only relative to y_l.
    Worked example: β = 0.1, r_w = 10, r_l = −10: 1 − σ(1) + σ(−1) = 2·0.268941 = 0.537883.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    return LossOutput(1 - torch.sigmoid(cfg.beta * r[0]) + torch.sigmoid(cfg.beta * r[1]), metrics)


@register("apo_down", needs_reference=True, input_kind="pair", params=(BETA,))
def apo_down(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """APO-down: lower the chosen answer's reward, and the rejected one's further.

    L = σ(β·r_w) + 1 − σ(β·(r_w − r_l))
    (D'Oosterlinck et al. 2024, eq. 8.) For data whose chosen answers are still worse than
    what the model writes now: both likelihoods fall, the margin still grows.
    Worked example: β = 0.1, r_w = 0, r_l = −10: σ(0) + 1 − σ(1) = 0.5 + 0.268941 = 0.768941.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    z = cfg.beta * r
    return LossOutput(torch.sigmoid(z[0]) + 1 - torch.sigmoid(z[0] - z[1]), metrics)


@register("discopop", needs_reference=True, input_kind="pair",
          params=(BETA, Param("discopop_tau", allowed="(0, inf)")))
def discopop(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """DiscoPOP: the logistic (DPO) and exponential losses of βu, blended by σ(βu/τ).

    L = (1 − σ(βu/τ))·(−log σ(βu)) + σ(βu/τ)·exp(−βu)
    (Chris Lu et al. 2024, "Discovering preference optimization algorithms with and for large
    language models", eq. 5: the log-ratio modulated loss found by LLM-driven search.)
    τ = ``discopop_tau`` (default 0.05, the paper's): small τ switches sharply at βu = 0 from
    the logistic loss (βu < 0) to the exponential one (βu > 0); τ → ∞ gives the even mix.
    Worked example: β = 0.1, u = 0: σ(0) = ½, L = ½·log 2 + ½·1 = 0.846574;
    u = 1, τ = 0.1: σ(1) = 0.731059, L = 0.268941·0.644397 + 0.731059·e^−0.1
    = 0.173305 + 0.661489 = 0.834794.
    """
    r, metrics = _rewards(policy, reference, cfg.beta)
    z = cfg.beta * (r[0] - r[1])
    mix = torch.sigmoid(z / cfg.discopop_tau)
    return LossOutput((1 - mix) * -logsigmoid(z) + mix * torch.exp(-z), metrics)
