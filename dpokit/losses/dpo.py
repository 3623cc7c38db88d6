"""Direct Preference Optimization (Rafailov et al. 2023) and its label-smoothed form (cDPO)."""

from __future__ import annotations

from torch import Tensor

from dpokit.losses.base import Logps, LossOutput, register, sigmoid_xent


def pair_rewards(policy: Logps, reference: Logps, beta: float) -> tuple[Tensor, Tensor]:
    """Implicit rewards r(x, y) = β·(log π(y|x) − log π_ref(y|x)) for chosen and rejected, (B,) each."""
    r = beta * (policy.sum - reference.sum).detach()
    return r[0], r[1]


def reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Per-pair reward metrics; accuracy counts a tie as wrong, as TRL does."""
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
    }


@register("sigmoid", needs_reference=True, input_kind="pair")
def dpo_sigmoid(policy: Logps, reference: Logps, cfg) -> LossOutput:
    """DPO: −log σ(β·u), with label smoothing ε this is cDPO.

    u = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]   (Rafailov 2023, eq. 7)
    L = −(1−ε)·log σ(β·u) − ε·log σ(−β·u)    (cDPO: each label is flipped with probability ε)

    Shapes: ``policy``/``reference`` hold (2, B) sums, row 0 chosen, row 1 rejected; returns (B,).

    Worked example (β = 0.1, ε = 0): log π = (−1, −2), log π_ref = (−1.5, −1.5) → u = 1,
    L = −log σ(0.1) = log(1 + e^−0.1) = 0.644397; rewards 0.05 and −0.05, accuracy 1.
    With ε = 0.2: L = 0.8·0.644397 + 0.2·0.744397 = 0.664397.
    """
    u = (policy.sum[0] - policy.sum[1]) - (reference.sum[0] - reference.sum[1])
    losses = sigmoid_xent(cfg.beta * u, 1.0 - cfg.label_smoothing)
    return LossOutput(losses, reward_metrics(*pair_rewards(policy, reference, cfg.beta)))
