"""The contract between the trainer and every loss: log-prob tensors in, per-example losses out.

Losses import torch and this module, nothing else of dpokit. A loss sees the responses of a
batch as groups: ``G`` responses for each of ``B`` prompts (pairs: G=2, chosen first;
SFT: G=1; listwise: G=k in rank order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor


@dataclass
class Logps:
    """Per-token log-probs of completion tokens.

    ``tokens``: (G, B, T) float32, zero wherever ``mask`` is False; ``mask``: (G, B, T) bool.
    """

    tokens: Tensor
    mask: Tensor

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


@dataclass
class LossOutput:
    """What a loss returns.

    ``losses`` (B,): per-example loss *numerators*; the trainer divides their sum over the
    whole optimizer batch by the batch's count of the spec's ``unit`` (examples or tokens),
    so gradient accumulation gives exactly the full-batch loss.
    ``metrics``: name -> (B,) per-example values, averaged over examples by the trainer.
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


LossFn = Callable[[Logps, "Logps | None", Any], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what it needs from the trainer."""

    name: str
    fn: LossFn
    needs_reference: bool
    """The trainer must supply reference log-probs."""
    input_kind: Literal["pair", "sft"]
    """How records are grouped: pairs (chosen, rejected) or single SFT completions."""
    unit: Literal["example", "token"]
    """What the batch loss is averaged over."""
    has_nll: bool = False
    """The loss contains an NLL term on the chosen completion."""
    summary: str = ""


_REGISTRY: dict[str, LossSpec] = {}


def register(name: str, *, needs_reference: bool, input_kind: str, unit: str = "example",
             has_nll: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: add a loss function to the registry under its CLI name."""

    def wrap(fn: LossFn) -> LossFn:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = LossSpec(name, fn, needs_reference, input_kind, unit, has_nll, summary)
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    """The registered loss; KeyError (listing the known names) for an unknown one."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_losses() -> dict[str, LossSpec]:
    return dict(_REGISTRY)


def sigmoid_xent(logits: Tensor, target: float) -> Tensor:
    """-[t·log σ(x) + (1-t)·log σ(-x)], stable for large |x|."""
    return -(target * torch.nn.functional.logsigmoid(logits) + (1 - target) * torch.nn.functional.logsigmoid(-logits))
