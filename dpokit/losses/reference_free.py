"""Losses without a reference model: SimPO, CPO, ORPO. Only the policy's log-probs enter, so
training holds one model and skips the reference pass entirely."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, chosen_nll, register, reward_metrics


@register("simpo", needs_reference=False, input_kind="pair",
          params=(BETA.with_default(2.0), Param("simpo_gamma", allowed="[0, inf)")))
def simpo(policy: Logps, reference: Logps | None, cfg, ctx: LossContext | None = None) -> LossOutput:
    """SimPO: −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ)   (Meng 2024, eq. 6)

    The reward is the length-normalised log-likelihood β·log π(y|x)/|y|, the quantity
    generation ranks by, and γ is a target reward margin. Defaults β = 2.0, γ = 1.0
    (``simpo_gamma``; the paper's Llama-3-Base setting). Rewards are β·mean token log-prob.
    Worked example: β = 2, γ = 1, chosen tokens (−1, −2) → mean −1.5, rejected (−3) → −3:
    argument 2·(−1.5) − 2·(−3) − 1 = 2, L = log(1 + e^−2) = 0.126928.
    """
    r = cfg.beta * policy.mean
    losses = -logsigmoid(r[0] - r[1] - cfg.simpo_gamma)
    return LossOutput(losses, reward_metrics(r[0], r[1]))


@register("cpo", needs_reference=False, input_kind="pair", has_nll=True,
          params=(BETA, Param("cpo_alpha", allowed="[0, inf)")))
def cpo(policy: Logps, reference: Logps | None, cfg, ctx: LossContext | None = None) -> LossOutput:
    """CPO: −log σ(β·log π(y_w|x) − β·log π(y_l|x)) + α·NLL(y_w)   (Xu 2024, eq. 6–7)

    DPO with a uniform reference (the reference terms cancel) plus a behaviour-cloning term
    on the preferred answer (per-token mean NLL). Defaults β = 0.1, α = 1 (``cpo_alpha``).
    Rewards are β·log π(y|x).
    Worked example: β = 0.1, α = 1, chosen tokens (−1, −2) → sum −3, rejected (−4) → −4:
    −log σ(0.1) + 1.5 = 0.644397 + 1.5 = 2.144397.
    """
    r = cfg.beta * policy.sum
    nll = chosen_nll(policy)
    losses = -logsigmoid(r[0] - r[1]) + cfg.cpo_alpha * nll
    metrics = reward_metrics(r[0], r[1])
    metrics["nll/chosen_per_token"] = nll.detach()
    return LossOutput(losses, metrics)


def log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 − p)) with p = exp(mean token log-prob); expm1 keeps 1 − p exact near p = 1."""
    mean_logp = mean_logp.clamp(max=-1e-6)
    return mean_logp - torch.log(-torch.expm1(mean_logp))


@register("orpo", needs_reference=False, input_kind="pair", has_nll=True,
          params=(Param("orpo_lambda", allowed="[0, inf)"),))
def orpo(policy: Logps, reference: Logps | None, cfg, ctx: LossContext | None = None) -> LossOutput:
    """ORPO: NLL(y_w) + λ·(−log σ(log odds(y_w) − log odds(y_l)))   (Hong 2024, eq. 6–7)

    odds(y) = P(y|x) / (1 − P(y|x)) with P(y|x) = exp(mean token log-prob): SFT and preference
    alignment in one stage, from the base model, without a reference. λ = 0.1 (``orpo_lambda``).
    Rewards are the log odds the loss compares.
    Worked example: λ = 0.1, chosen mean log-prob log 0.5 (odds 1, log odds 0), rejected
    log 0.2 (odds 0.25, log odds −1.386294): NLL 0.693147 + 0.1·log(1 + e^−1.386294)
    = 0.693147 + 0.1·0.223144 = 0.715462.
    """
    lo = log_odds(policy.mean)
    nll = chosen_nll(policy)
    ratio_loss = -logsigmoid(lo[0] - lo[1])
    metrics = reward_metrics(lo[0], lo[1])
    metrics["nll/chosen_per_token"] = nll.detach()
    metrics["orpo/ratio_loss"] = ratio_loss.detach()
    return LossOutput(nll + cfg.orpo_lambda * ratio_loss, metrics)
