"""Supervised fine-tuning: negative log-likelihood of completion tokens."""

from __future__ import annotations

from dpokit.logps import Logps
from dpokit.losses.base import LossOutput, register


@register("sft", needs_reference=False, input_kind="sft", unit="token", has_nll=True)
def sft_nll(policy: Logps, reference: Logps | None, cfg, ctx=None) -> LossOutput:
    """SFT: mean over all completion tokens of the batch of −log π(y_t | x, y_<t).

    Returns each example's summed NLL (B,); the trainer divides by the batch's token count, so
    long and short completions weigh per token, as in ordinary language-model training.
    Worked example: token log-probs (−1, −2) and (−3): loss = (1 + 2 + 3) / 3 = 2.
    """
    nll = -policy.sum[0]
    return LossOutput(nll, {"nll/per_token": -policy.mean[0]})
