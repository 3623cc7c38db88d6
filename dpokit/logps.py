"""``Logps``: what the log-prob path produces and every loss consumes, so both import it from
here and neither from the other."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Logps:
    """Per-token log-probs of completion tokens.

    ``tokens``: (G, B, T) float32, zero wherever ``mask`` is False; ``mask``: (G, B, T) bool.
    ``kl``: (G, B, T) per-token KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) over the whole vocabulary,
    present only for losses that declare ``token_kl`` (token-level DPO).
    ``dist``: (G·B, T, V) the full log-distributions at those positions, present only in a
    reference's output for such losses (the policy's ``kl`` is computed against them).
    ``align``: (G, B, T) per position, log Σ_v π(v|·)² or log max_v π(v|·), not differentiated
    (WPO's weight alignment), present only when the run asks for it (``loss.wpo_alignment``).
    """

    tokens: Tensor
    mask: Tensor
    kl: Tensor | None = None
    dist: Tensor | None = None
    align: Tensor | None = None

    @property
    def sum(self) -> Tensor:
        """(G, B) log π(y|x): the sum over completion tokens."""
        return self.tokens.sum(-1)

    @property
    def count(self) -> Tensor:
        """(G, B) number of completion tokens |y|."""
        return self.mask.sum(-1)

    @property
    def mean(self) -> Tensor:
        """(G, B) per-token mean log-prob, log π(y|x) / |y|."""
        return self.sum / self.count.clamp(min=1)
