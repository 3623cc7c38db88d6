"""KTO: preference optimisation from unpaired thumbs-up / thumbs-down feedback."""

from __future__ import annotations

import torch

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, log_ratios, masked, register


@register("kto", needs_reference=True, input_kind="unpaired", batch_stats=True,
          params=(BETA, Param("kto_desirable_weight", allowed="(0, inf)"),
                  Param("kto_undesirable_weight", allowed="(0, inf)")))
def kto(policy: Logps, reference: Logps, cfg, ctx: LossContext) -> LossOutput:
    """KTO: a prospect-theoretic loss on unpaired desirable / undesirable answers.

    (Ethayarajh 2024, eq. 8.) L = λ_y − v(x, y) with r = log π(y|x) − log π_ref(y|x) and
      v = λ_D·σ(β·(r − z0))  for a desirable answer,
      v = λ_U·σ(β·(z0 − r))  for an undesirable one.
    z0, the reference point, estimates KL(π‖π_ref) as the batch mean of r over *mismatched*
    pairs (each prompt with another record's completion: row 1 of the batch; on several
    processes the whole global batch), clamped at 0 and not differentiated. Defaults β = 0.1, λ_D = λ_U = 1 (``kto_desirable_weight``,
    ``kto_undesirable_weight``; the paper advises λ_D·n_D/(λ_U·n_U) in [1, 4/3]).
    Rewards β·r are reported per label (rewards/chosen: desirable answers, rewards/rejected:
    undesirable ones); accuracy: r above z0 for desirable, below for undesirable.
    Worked example: β = 0.1, mismatched r = (1, 3) → z0 = 2; a desirable answer with r = 4:
    1 − σ(0.2) = 0.450166; an undesirable one with r = 4: 1 − σ(−0.2) = 0.549834.
    """
    r = log_ratios(policy, reference)
    z0 = ctx.gather(r[1].detach()).mean().clamp(min=0)
    desirable = ctx.labels[:, 0] > 0.5
    weight = torch.where(desirable, r.new_tensor(cfg.kto_desirable_weight), r.new_tensor(cfg.kto_undesirable_weight))
    value = torch.sigmoid(cfg.beta * torch.where(desirable, r[0] - z0, z0 - r[0]))
    losses = weight * (1 - value)
    reward = cfg.beta * r[0]
    metrics = {
        "rewards/chosen": masked(reward, desirable),
        "rewards/rejected": masked(reward, ~desirable),
        "rewards/accuracies": torch.where(desirable, r[0] > z0, r[0] < z0).float(),
        "kto/z0": z0.expand_as(reward),
    }
    return LossOutput(losses, metrics)
