"""DPO (Rafailov et al. 2023) and the variants that change its sigmoid's argument or weighting.

Notation: u = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)] from
summed token log-probs; ``policy``/``reference`` hold (2, B) values, row 0 chosen, row 1
rejected. Rewards are β·(log π − log π_ref), the implicit reward each of these optimises.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import (BETA, LABEL_SMOOTHING, LossContext, LossOutput, Param, chosen_nll, log_ratios, register,
                                reward_metrics, sigmoid_xent)


def _margin(policy: Logps, reference: Logps) -> Tensor:
    r = log_ratios(policy, reference)
    return r[0] - r[1]


def _dpo_rewards(policy: Logps, reference: Logps, beta: float) -> dict[str, Tensor]:
    r = beta * log_ratios(policy, reference)
    return reward_metrics(r[0], r[1])


WPO = Param("wpo")
"""Weight each pair by the policy's own length-normalised probabilities of its answers (sigmoid, cdpo)."""
WPO_ALIGNMENT = Param("wpo_alignment")
"""With ``wpo``: each token's probability divided by Σ_v π(v)² (sampled) or max_v π(v) (greedy) first."""


def wpo_weights(policy: Logps, alignment: str = "none") -> Tensor:
    """(B,) sg[π(y_w|x)^{1/|y_w|} · π(y_l|x)^{1/|y_l|}]: pairs the policy itself would likely
    write weigh more (Zhou et al. 2024, "WPO: enhancing RLHF with weighted preference
    optimization", the length-normalised weight of §3).

    Weight alignment (same section): a token the policy would sample has expected probability
    Σ_v π(v)², not 1, so even the policy's own outputs weigh much less than 1 in the plain form.
    ``sampled`` divides each π(y_t) by Σ_v π(v|·)² (what TRL's ``use_weighting`` computes),
    ``greedy`` by max_v π(v|·) (the policy's greedy output then weighs exactly 1); the aligned
    weight is capped at 1. From ``Logps.align`` (log of the divisor per position), e.g. one token
    each, π(y_w) = 0.2 of (0.8, 0.2), π(y_l) = 0.5 of (0.5, 0.5): sampled
    w = (0.2/0.68)·(0.5/0.5) = 0.294118; greedy w = (0.2/0.8)·(0.5/0.5) = 0.25."""
    if alignment == "none":
        return torch.exp(policy.mean[0] + policy.mean[1]).detach()
    assert policy.align is not None, "the policy kind computes Logps.align when loss.wpo_alignment asks"
    adjusted = ((policy.tokens - policy.align) * policy.mask).sum(-1) / policy.count.clamp(min=1)
    return torch.exp(adjusted[0] + adjusted[1]).clamp(max=1.0).detach()


@register("sigmoid", needs_reference=True, input_kind="pair", params=(BETA, LABEL_SMOOTHING, WPO, WPO_ALIGNMENT))
def dpo_sigmoid(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """DPO: −log σ(β·u); with label smoothing ε it is cDPO.

    L = −(1−ε)·log σ(β·u) − ε·log σ(−β·u)    (Rafailov 2023, eq. 7; ε = 0 by default)

    Worked example (β = 0.1, ε = 0): log π = (−1, −2), log π_ref = (−1.5, −1.5) → u = 1,
    L = −log σ(0.1) = log(1 + e^−0.1) = 0.644397; rewards 0.05 and −0.05, accuracy 1.
    With ε = 0.2: L = 0.8·0.644397 + 0.2·0.744397 = 0.664397.
    With ``wpo`` (WPO weighting) each pair's loss is multiplied by ``wpo_weights``: in the
    example e^{−1 − 2} = 0.049787, L = 0.049787·0.644397 = 0.032083.
    """
    losses = sigmoid_xent(cfg.beta * _margin(policy, reference), 1.0 - cfg.label_smoothing)
    metrics = _dpo_rewards(policy, reference, cfg.beta)
    if cfg.wpo:
        weights = wpo_weights(policy, cfg.wpo_alignment)
        losses, metrics["wpo/weight"] = losses * weights, weights
    return LossOutput(losses, metrics)


@register("cdpo", needs_reference=True, input_kind="pair",
          params=(BETA, LABEL_SMOOTHING.with_default(0.1), WPO, WPO_ALIGNMENT))
def cdpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """Conservative DPO: labels flipped with probability ε (default 0.1).

    L = −(1−ε)·log σ(β·u) − ε·log σ(−β·u)   (Mitchell 2023, "A note on DPO with noisy preferences")
    The minimiser keeps a finite margin, σ(β·u*) = 1 − ε, instead of driving u to infinity.
    Worked example: β = 0.1, u = 1, ε = 0.1: 0.9·0.644397 + 0.1·0.744397 = 0.654397.
    """
    return dpo_sigmoid(policy, reference, cfg)


@register("robust", needs_reference=True, input_kind="pair", params=(BETA, LABEL_SMOOTHING.with_default(0.1)))
def robust_dpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """Robust DPO (rDPO): an unbiased loss under labels flipped with probability ε (default 0.1).

    L = [(1−ε)·ℓ(β·u) − ε·ℓ(−β·u)] / (1 − 2ε),  ℓ(z) = −log σ(z)   (Chowdhury 2024, eq. 8)
    Unlike cDPO the flipped term enters with a minus sign, so in expectation over the noise
    the loss equals DPO on clean labels.
    Worked example: β = 0.1, u = 1, ε = 0.1: ℓ(0.1) = 0.644397, ℓ(−0.1) = 0.744397,
    L = (0.9·0.644397 − 0.1·0.744397) / 0.8 = (0.579957 − 0.074440) / 0.8 = 0.631897.
    """
    z, eps = cfg.beta * _margin(policy, reference), cfg.label_smoothing
    losses = ((1 - eps) * -logsigmoid(z) - eps * -logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(losses, _dpo_rewards(policy, reference, cfg.beta))


@register("dpop", needs_reference=True, input_kind="pair", params=(BETA, Param("dpop_lambda", allowed="[0, inf)")))
def dpo_positive(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """DPO-Positive: DPO that also penalises lowering the chosen answer's likelihood.

    L = −log σ(β·(u − λ·max(0, log π_ref(y_w|x) − log π(y_w|x))))   (Pal 2024, eq. 3; λ = 50)
    Plain DPO can lower log π(y_w) as long as log π(y_l) falls faster; the penalty is zero
    while the policy keeps y_w at least as likely as the reference does.
    Worked example: β = 0.1, λ = 50, log π = (−2, −3), log π_ref = (−1.5, −3):
    u = −0.5, penalty = max(0, −1.5 + 2) = 0.5, argument 0.1·(−0.5 − 25) = −2.55,
    L = log(1 + e^2.55) = 2.625183.
    """
    r = log_ratios(policy, reference)
    penalty = torch.clamp(-r[0], min=0)
    losses = -logsigmoid(cfg.beta * (r[0] - r[1] - cfg.dpop_lambda * penalty))
    out = _dpo_rewards(policy, reference, cfg.beta)
    out["dpop/penalty"] = penalty.detach()
    return LossOutput(losses, out)


@register("rdpo", needs_reference=True, input_kind="pair", params=(BETA, Param("rdpo_alpha")))
def rdpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """R-DPO: DPO with a length regulariser, L = −log σ(β·u + α·(|y_w| − |y_l|)).

    (Park et al. 2024, "Disentangling length from quality in DPO", eq. 9.) Sign check: the
    paper penalises length in the RLHF objective, r(x, y) − α|y|; solving for the reward gives
    r = β·log π/π_ref + α|y| + const, and the Bradley–Terry difference of two such rewards
    adds +α(|y_w| − |y_l|). When the chosen answer is longer the term is positive, so the
    pair is already partly "explained" by length and the policy is pushed less to prefer it:
    length stops being a shortcut. α = 0 is DPO. Default α = 0.05 (the paper tunes α per
    setting; tune it for your data). |y| counts completion tokens including EOS.
    Worked example: β = 0.1, u = 1, |y_w| = 3, |y_l| = 5, α = 0.05: argument 0.1 − 0.1 = 0,
    L = log 2 = 0.693147.
    """
    u = _margin(policy, reference)
    lengths = policy.count.to(u.dtype)
    z = cfg.beta * u + cfg.rdpo_alpha * (lengths[0] - lengths[1])
    return LossOutput(-logsigmoid(z), _dpo_rewards(policy, reference, cfg.beta))


@register("nll", needs_reference=False, input_kind=("pair", "list"), has_nll=True)
def nll(policy: Logps, reference: Logps | None, cfg, ctx: LossContext | None = None) -> LossOutput:
    """NLL of the chosen (best) answer per token, −log π(y_w|x)/|y_w|: add it to any loss (RPO).

    RPO (Pang 2024, "Iterative reasoning preference optimization") trains DPO + α·this term,
    e.g. ``--loss sigmoid:1.0,nll:1.0``; the SFT term of SLiC-HF is ``--loss hinge,nll:λ``.
    Worked example: chosen token log-probs (−1, −2): L = 1.5.
    """
    value = chosen_nll(policy)
    return LossOutput(value, {"nll/chosen_per_token": value.detach()})
