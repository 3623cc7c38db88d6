"""Losses with per-batch or per-token structure: β-DPO (dynamic β) and token-level DPO."""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, Param, log_ratios, register, reward_metrics


def _update_gap_stats(state: dict, gap: torch.Tensor, momentum: float) -> tuple[float, float]:
    """Running mean and std of the margins u, updated with this batch before use."""
    mean = gap.mean().item()
    std = gap.std().item() if gap.numel() > 1 else 0.0
    if "beta_dpo/gap_mean" in state:  # the first batch sets the statistics outright
        mean = momentum * state["beta_dpo/gap_mean"] + (1 - momentum) * mean
        std = momentum * state["beta_dpo/gap_std"] + (1 - momentum) * std
    state["beta_dpo/gap_mean"], state["beta_dpo/gap_std"] = mean, std
    return mean, std


@register("beta_dpo", needs_reference=True, input_kind="pair", batch_stats=True,
          params=(BETA, Param("beta_dpo_alpha", allowed="[0, inf)"), Param("beta_dpo_momentum", allowed="[0, 1)"),
                  Param("beta_dpo_filter", allowed="[0, 1)")))
def beta_dpo(policy: Logps, reference: Logps, cfg, ctx: LossContext) -> LossOutput:
    """β-DPO: DPO with β calibrated per batch from how informative the batch's pairs are.

    (Wu et al. 2024, "β-DPO: DPO with dynamic β".) With the margins u_i of the batch and M0,
    σ their running mean and std (momentum m, updated with this batch first):
      β_batch = β·(1 + α·(mean_i u_i − M0)), clamped at ≥ 0.001 and not differentiated;
      L_i = −log σ(β_batch·u_i).
    Batches whose pairs are easier than usual (large gaps) get a larger β, i.e. stay closer
    to the reference. Optional β-guided filtering (``beta_dpo_filter`` = ρ > 0): a fraction
    1 − ρ of the pairs is drawn without replacement with probability ∝ exp(−(u_i − M0)²/2σ²),
    dropping outliers; the mean is taken over the kept pairs, and β_batch uses their mean.
    Defaults: α = 0.5 (the paper tunes α per model; tune it for your data), m = 0.9 and
    ρ = 0 (off; the authors' code uses 0.2 when filtering). α = 0 and ρ = 0 is exactly DPO.
    Evaluation batches read the statistics but do not update them, and are not filtered.
    On several processes the statistics cover the global batch (the filter's kept mean stays
    per process).
    Worked example: β = 0.1, α = 0.5, first batch u = (1, 3): M0 = 2, mean 2 → β_batch = 0.1,
    L = (log(1 + e^−0.1), log(1 + e^−0.3)) = (0.644397, 0.554355).
    """
    u = log_ratios(policy, reference)
    u = u[0] - u[1]
    gap, n = u.detach(), u.shape[0]
    if ctx.training:
        m0, sigma = _update_gap_stats(ctx.state, ctx.gather(gap), cfg.beta_dpo_momentum)
    else:
        m0 = ctx.state.get("beta_dpo/gap_mean", gap.mean().item())
        sigma = ctx.state.get("beta_dpo/gap_std", 0.0)
    keep = torch.ones(n, dtype=torch.bool, device=u.device)
    if cfg.beta_dpo_filter > 0 and ctx.training and n > 1:
        weights = torch.exp(-0.5 * ((gap - m0) / max(sigma, 1e-6)) ** 2) + 1e-12
        chosen = torch.multinomial(weights, max(1, round(n * (1 - cfg.beta_dpo_filter))), replacement=False)
        keep = torch.zeros_like(keep).index_fill_(0, chosen, True)
    kept_mean = ctx.gather(gap).mean().item() if bool(keep.all()) else gap[keep].mean().item()
    beta_batch = max(cfg.beta * (1 + cfg.beta_dpo_alpha * (kept_mean - m0)), 1e-3)
    # Kept pairs are scaled by n / kept so the trainer's per-example mean is the mean over kept pairs.
    losses = -logsigmoid(beta_batch * u) * keep * (n / int(keep.sum()))
    r = cfg.beta * log_ratios(policy, reference)
    metrics = reward_metrics(r[0], r[1])
    metrics["beta_dpo/beta"] = torch.full_like(gap, beta_batch)
    metrics["beta_dpo/kept"] = keep.float()
    return LossOutput(losses, metrics)


@register("tdpo", needs_reference=True, input_kind="pair", token_kl=True,
          params=(BETA, Param("tdpo_alpha", allowed="[0, inf)"), Param("tdpo_variant")))
def tdpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """Token-level DPO (Zeng et al. 2024): DPO plus the difference of sequential KL divergences.

    D_SeqKL(x, y) = Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)), summed over the whole vocabulary
    at each completion position, for y_w and y_l.
      TDPO1: L = −log σ(β·u − β·(D_SeqKL(x, y_l) − D_SeqKL(x, y_w)))
      TDPO2: L = −log σ(β·u − α·β·(D_SeqKL(x, y_l) − sg[D_SeqKL(x, y_w)]))   (default; α = 0.5)
    sg = stop-gradient. The KL terms keep the policy's per-token distributions near the
    reference's, which DPO alone does not control. Needs full reference distributions, so the
    reference must be live (``--ref copy`` or ``adapter``), not the precomputed cache.
    Worked example (TDPO2, β = 0.1, α = 0.5): u = 1, D_SeqKL(y_w) = 0.4, D_SeqKL(y_l) = 1.2:
    argument 0.1·(1 − 0.5·0.8) = 0.06, L = log(1 + e^−0.06) = 0.663597.
    """
    r = log_ratios(policy, reference)
    kl = policy.kl.sum(-1)  # (2, B)
    if cfg.tdpo_variant == 1:
        delta = kl[1] - kl[0]
    else:
        delta = cfg.tdpo_alpha * (kl[1] - kl[0].detach())
    losses = -logsigmoid(cfg.beta * (r[0] - r[1] - delta))
    metrics = reward_metrics(cfg.beta * r[0], cfg.beta * r[1])
    metrics["tdpo/seq_kl_chosen"], metrics["tdpo/seq_kl_rejected"] = kl[0].detach(), kl[1].detach()
    return LossOutput(losses, metrics)


