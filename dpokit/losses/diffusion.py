"""Diffusion-DPO (Wallace et al. 2023): DPO for a denoiser, whose log-likelihood is replaced by
minus its denoising error.

Derivation (Wallace 2023, eqs. 10-14). A diffusion model's ELBO gives, per timestep t and noise ε,
log p_θ(x_0|c) ≈ −T·ω(λ_t)·||ε − ε_θ(x_t, t, c)||² + const, so the per-response log-ratio is
log p_θ/p_ref ≈ −T·ω(λ_t)·(L − L^ref) with L = ||ε − ε_θ(x_t, t, c)||². Putting that in DPO's
−log σ(β·[(log-ratio of y_w) − (log-ratio of y_l)]) gives the paper's eq. 14,

    L_DPO = −log σ(−β·T·ω(λ_t)·((L_w − L_l) − (L_w^ref − L_l^ref))),

with winner and loser sharing t and ε. The authors' reference code (SalesforceAIResearch/
DiffusionDPO, train.py) takes L as the *mean* squared error over the latent's elements, folds T
into β and uses ω = ½: inside = −½·β·((L_w − L_l) − (L_w^ref − L_l^ref)), loss = −log σ(inside),
implicit accuracy = (inside > 0), with β = 5000 for SD 1.5 (2000-5000 in its experiments).

So a policy whose ``Logps`` hold −½·MSE per response (``denoising_logps``) makes the ordinary
DPO margin u = inside/β, and this loss *is* ``sigmoid`` on those log-probs, exactly: the same
function, registered again so that β defaults to the paper's units (5000, not 0.1) and the
rewards read β·(−½)(L − L^ref), the paper's. The sign: a smaller denoising error on the winner
than the reference makes the winner's reward positive.

Worked example (β = 5000): MSE policy (w, l) = (0.1000, 0.1002), reference (0.11, 0.11): inside = −2500·(−0.0002) = 0.5, L = log(1 + e^−0.5) = 0.474077, rewards
chosen −2500·(0.1 − 0.11) = 25, rejected −2500·(0.1002 − 0.11) = 24.5, margin 0.5, accuracy 1.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps
from dpokit.losses.base import BETA, LossContext, LossOutput, log_ratios, register, reward_metrics

DIFFUSION_BETA = BETA.with_default(5000.0)
"""β in the paper's units: its reference code uses 5000 (SD 1.5) and 2000-5000 in experiments."""


def denoising_logps(pred: Tensor, noise: Tensor) -> Logps:
    """(G, B, ...) predicted and true noise → Logps whose sum is −½·mean_i (ε_θ − ε)_i² per response.

    The ½ is ω(λ_t) of the paper's reference code; the mean over elements its choice too (a
    sum would only rescale β by the latent's size)."""
    error = (pred.float() - noise.float()).pow(2).flatten(2).mean(-1)
    tokens = (-0.5 * error).unsqueeze(-1)
    return Logps(tokens, torch.ones_like(tokens, dtype=torch.bool))


@register("diffusion_dpo", needs_reference=True, input_kind="pair", params=(DIFFUSION_BETA,))
def diffusion_dpo(policy: Logps, reference: Logps, cfg, ctx: LossContext | None = None) -> LossOutput:
    """Diffusion-DPO: −log σ(−½·β·((L_w − L_l) − (L_w^ref − L_l^ref))) on ``denoising_logps``.

    Identical to ``sigmoid`` (ε = 0) on the same Logps; β defaults to 5000 (the paper's units).
    Worked example (β = 5000): MSE policy (w, l) = (0.1000, 0.1002), reference (0.11, 0.11):
    argument −2500·(−0.0002) = 0.5, L = log(1 + e^−0.5) = 0.474077 (the module docstring has the rest).
    """
    r = log_ratios(policy, reference)
    losses = -logsigmoid(cfg.beta * (r[0] - r[1]))
    return LossOutput(losses, reward_metrics(cfg.beta * r[0], cfg.beta * r[1]))
