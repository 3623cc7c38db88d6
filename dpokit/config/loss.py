"""The ``loss:`` section of a run config: which loss, and the hyperparameters of every registered
loss (docs/losses.md). ``RunConfig`` holds it as
``loss`` and checks it with ``checks()``. Which loss reads a field, its default for that loss and
the values allowed are declared where the loss is registered (``dpokit/losses/``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LossConfig:
    """Hyperparameters of every registered loss; each loss reads the ones it names.
    ``beta`` and ``label_smoothing`` left empty take the chosen loss's own default."""

    name: str = "sigmoid"
    """Registered loss (``dpokit losses``), or a weighted sum such as ``sigmoid:1.0,nll:0.2``."""
    beta: float | None = None
    """β: the strength of the pull towards the reference (smaller moves further); default 0.1, SimPO 2.0, diffusion_dpo 5000 (its own units: see docs/diffusion.md)."""
    label_smoothing: float | None = None
    """ε, the assumed rate of flipped labels (aot, aot_unpaired, cdpo, robust, sigmoid): 0 ≤ ε < 0.5; default 0, cdpo/robust 0.1."""
    wpo: bool = False
    """sigmoid, cdpo: weight each pair by sg[π(y_w|x)^{1/|y_w|}·π(y_l|x)^{1/|y_l|}], the policy's own
    length-normalised probabilities of its answers (WPO)."""
    wpo_alignment: Literal["none", "sampled", "greedy"] = "none"
    """with wpo: divide each token's probability by Σ_v π(v)² (sampled; TRL's ``use_weighting``) or by
    max_v π(v) (greedy) before the mean, so that the policy's own outputs weigh about 1 (WPO's weight
    alignment); the weight is then capped at 1. none: the plain weight."""
    ipo_average: bool = True
    """IPO: compare per-token mean log-probs (true) or summed log-probs as in the paper (false)."""
    hinge_margin: float = 1.0
    """hinge (SLiC): the margin δ in max(0, δ − u)."""
    rso_gamma: float = 0.05
    """rso: the scale γ of the log-ratio margin."""
    rso_norm: Literal["hinge", "sigmoid"] = "hinge"
    """rso: hinge-norm max(0, 1 − γu) or sigmoid-norm −log σ(γu)."""
    dpop_lambda: float = 50.0
    """dpop: weight λ of the penalty for lowering the chosen answer's likelihood."""
    beta_dpo_alpha: float = 0.5
    """beta_dpo: how strongly β follows the batch's mean margin (0 keeps β fixed)."""
    beta_dpo_momentum: float = 0.9
    """beta_dpo: momentum of the running margin statistics."""
    beta_dpo_filter: float = 0.0
    """beta_dpo: fraction of outlier pairs dropped from each batch (0: no filtering)."""
    rdpo_alpha: float = 0.05
    """rdpo: weight α of the length difference |y_w| − |y_l| inside the sigmoid."""
    tdpo_alpha: float = 0.5
    """tdpo: weight α of the sequential-KL term (TDPO2)."""
    tdpo_variant: Literal[1, 2] = 2
    """tdpo: 1 (KL terms with full gradient) or 2 (chosen KL detached, weighted by α)."""
    simpo_gamma: float = 1.0
    """simpo: target reward margin γ."""
    cpo_alpha: float = 1.0
    """cpo: weight of the NLL term on the chosen answer."""
    orpo_lambda: float = 0.1
    """orpo: weight λ of the odds-ratio term."""
    kto_desirable_weight: float = 1.0
    """kto: λ_D, the weight of desirable examples."""
    kto_undesirable_weight: float = 1.0
    """kto: λ_U, the weight of undesirable examples."""
    exo_epsilon: float = 1e-3
    """exo_pair: ε, the smoothing of the target label (1 − ε, ε) the policy's pair distribution is fitted to; 0 < ε < 0.5."""
    discopop_tau: float = 0.05
    """discopop: temperature τ of the blend σ(βu/τ) between its logistic and exponential parts."""
    gpo_fn: Literal["logistic", "hinge", "squared", "exponential", "truncated_quadratic", "savage"] = "logistic"
    """gpo: the convex function f in f(β·u)."""
    fdpo_divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl"
    """fdpo: the f-divergence to the reference: reverse_kl (DPO), forward_kl, js (Jensen–Shannon), alpha."""
    fdpo_alpha: float = 0.5
    """fdpo with the alpha divergence: α in (0, 1] (→ 0 reverse KL, 1 forward KL)."""
    ld_alpha: float = 0.5
    """ld_dpo: weight α in [0, 1] of the longer answer's tokens past the shorter one's length (1: DPO)."""
    rk_nu: float = 2.0
    """dpo_rk: Rao–Kupper's ν > 1; P(tie) = (ν − 1)/(ν + 1) when policy = reference (2: a third)."""
    davidson_nu: float = 1.0
    """dpo_davidson: Davidson's ν > 0; P(tie) = ν/(2 + ν) when policy = reference (1: a third)."""

    def resolve_defaults(self, spec_defaults: tuple[tuple[str, float], ...]) -> None:
        """Fill empty fields with the loss's own defaults, then with those of the parameters several
        losses share (so a run's saved config holds every value)."""
        from dpokit.losses.base import SHARED

        for key, value in (*spec_defaults, *((p.name, p.default) for p in SHARED)):
            if getattr(self, key) is None:
                setattr(self, key, value)

    def checks(self) -> list[tuple[bool, str, str]]:
        """(bad, field, message) for each parameter any registered loss reads, by the rule its
        registration gives (``dpokit.losses``): a bad value is refused whichever loss runs."""
        from dpokit.losses import all_params

        problems = [(f"loss.{p.name}", p.problem(getattr(self, p.name))) for p in all_params().values()]
        return [(msg is not None, name, msg or "") for name, msg in problems] + [
            (self.wpo_alignment != "none" and not self.wpo, "loss.wpo_alignment",
             "aligns WPO's pair weights: add --wpo")]
