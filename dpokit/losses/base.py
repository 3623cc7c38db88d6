"""The contract between the trainer and every loss: log-prob tensors in, per-example losses out.

Losses import torch, this module and ``dpokit.logps``, nothing else of dpokit. A loss sees the responses of a
batch as groups: ``G`` responses for each of ``B`` prompts (pairs: G=2, chosen first;
SFT: G=1; listwise: G=k, best first; unpaired: G=2, the example's own completion and a
completion of another prompt, used by KTO to estimate its reference point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from dpokit.logps import Logps


@dataclass
class LossOutput:
    """What a loss returns.

    ``losses`` (B,): per-example loss *numerators*; the trainer divides their sum over the
    whole optimizer batch by the batch's count of the spec's ``unit`` (examples or tokens),
    so gradient accumulation gives exactly the full-batch loss.
    ``metrics``: name -> (B,) per-example values, averaged over examples by the trainer;
    NaN marks an example a metric does not apply to (e.g. KTO's rewards of the other label).
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossContext:
    """What a loss may need besides log-probs."""

    labels: Tensor | None = None
    """(B, L) per-record labels: unpaired [1 desirable / 0 undesirable]; lists: answer scores."""
    state: dict[str, Any] = field(default_factory=dict)
    """Running statistics a loss keeps across steps (β-DPO); saved with checkpoints."""
    training: bool = True
    """Only training batches update ``state``."""
    gather: Callable[[Tensor], Tensor] = lambda values: values
    """Concatenates a detached (B,) tensor over all processes of a training step, so batch
    statistics (KTO's z0, β-DPO's margin statistics) cover the whole global batch."""
    ties: Tensor | None = None
    """(B,) bool, True for a pair judged a tie (``data.ties=keep``, losses that take ties); None: no ties."""


LossFn = Callable[[Logps, "Logps | None", Any, LossContext], LossOutput]
Kind = Literal["pair", "list", "unpaired", "sft"]


@dataclass(frozen=True)
class Param:
    """A hyperparameter a loss reads: a ``LossConfig`` field, this loss's default, the values allowed."""

    name: str
    default: float | None = None
    """This loss's default, for a field left empty (None in ``LossConfig``); None: the field's own default."""
    allowed: str = ""
    """An interval, ``(0, inf)``, ``[0, inf)``, ``[0, 0.5)``...; empty: any value of the field's type."""

    def with_default(self, value: float) -> Param:
        return Param(self.name, value, self.allowed)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``must be > 0``), or None."""
        if not self.allowed:
            return None
        lo_closed, hi_closed = self.allowed[0] == "[", self.allowed[-1] == "]"
        lo, hi = (float(x) for x in self.allowed[1:-1].split(","))
        ok = (value >= lo if lo_closed else value > lo) and (value <= hi if hi_closed else value < hi)
        if ok:
            return None
        if hi == float("inf"):
            return f"must be {'≥' if lo_closed else '>'} {lo:g}"
        return f"must be in {self.allowed}"


BETA = Param("beta", 0.1, "(0, inf)")
"""β, read by most losses; a loss with another default declares ``BETA.with_default(...)``."""
LABEL_SMOOTHING = Param("label_smoothing", 0.0, "[0, 0.5)")
"""ε, the assumed rate of flipped labels."""
SHARED = (BETA, LABEL_SMOOTHING)
"""Parameters several losses read: their defaults hold whatever loss runs (saved with the run)."""


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what it needs from the trainer."""

    name: str
    fn: LossFn
    needs_reference: bool
    """The trainer must supply reference log-probs."""
    kinds: tuple[str, ...]
    """Record kinds the loss accepts, the first preferred: pair, list, unpaired, sft."""
    unit: Literal["example", "token"]
    """What the batch loss is averaged over."""
    has_nll: bool = False
    """The loss contains an NLL term on the chosen completion."""
    token_kl: bool = False
    """The loss needs per-token KL to the reference (full distributions: live reference only)."""
    batch_stats: bool = False
    """The loss uses statistics of the micro-batch, so accumulation changes its value."""
    params: tuple[Param, ...] = ()
    """The ``LossConfig`` fields the loss reads, with its own defaults and the values allowed."""
    summary: str = ""
    takes_ties: bool = False
    """The loss trains on pairs judged a tie (``ctx.ties``), so ``data.ties=keep`` may feed it."""

    @property
    def input_kind(self) -> str:
        return self.kinds[0]

    @property
    def defaults(self) -> tuple[tuple[str, float], ...]:
        """(field, default) of the parameters whose default this loss sets (e.g. SimPO's β)."""
        return tuple((p.name, p.default) for p in self.params if p.default is not None)


_REGISTRY: dict[str, LossSpec] = {}


def register(name: str, *, needs_reference: bool, input_kind: str | tuple[str, ...], unit: str = "example",
             has_nll: bool = False, token_kl: bool = False, batch_stats: bool = False,
             params: tuple[Param, ...] = (), takes_ties: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: add a loss function to the registry under its CLI name, with the parameters it reads."""
    kinds = (input_kind,) if isinstance(input_kind, str) else tuple(input_kind)

    def wrap(fn: LossFn) -> LossFn:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} registered twice")
        known = all_params()
        for p in params:  # one field, one rule, whichever loss reads it
            if p.name in known and known[p.name].allowed != p.allowed:
                raise ValueError(f"loss {name!r}: {p.name} allowed {p.allowed!r}, elsewhere {known[p.name].allowed!r}")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = LossSpec(name, fn, needs_reference, kinds, unit, has_nll, token_kl, batch_stats,
                                   tuple(params), summary, takes_ties)
        return fn

    return wrap


def all_params() -> dict[str, Param]:
    """Every parameter some registered loss reads, by field (the first declaration's default)."""
    out: dict[str, Param] = {}
    for spec in _REGISTRY.values():
        for p in spec.params:
            out.setdefault(p.name, p)
    return out


def losses_for(kind: str) -> list[str]:
    """The registered losses whose preferred record kind is ``kind`` (``list``: the listwise ones)."""
    return [name for name, spec in _REGISTRY.items() if spec.input_kind == kind]


def get_loss(name: str) -> LossSpec:
    """The registered loss, or a weighted sum such as ``sigmoid:1.0,nll:0.2``.

    KeyError (listing the known names) for an unknown name; ValueError for a combination
    whose parts cannot share a batch.
    """
    if "," in name or ":" in name:
        return _combine(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_losses() -> dict[str, LossSpec]:
    return dict(_REGISTRY)


def _combine(text: str) -> LossSpec:
    parts: list[tuple[LossSpec, float]] = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} must be a number; got {weight!r}") from None
        if not w > 0 or w == float("inf"):
            raise ValueError(f"weight of {name!r} must be a positive number; got {weight!r}")
        parts.append((get_loss(name), w))
    if len({s.name for s, _ in parts}) < len(parts):
        raise ValueError(f"a loss appears twice in {text!r}")
    kinds = [k for k in parts[0][0].kinds if all(k in s.kinds for s, _ in parts)]
    if not kinds:
        raise ValueError(f"the losses in {text!r} take different record kinds: "
                         + ", ".join(f"{s.name} ({'/'.join(s.kinds)})" for s, _ in parts))
    if len({s.unit for s, _ in parts}) > 1:
        raise ValueError(f"the losses in {text!r} average over different units (examples and tokens)")

    def combined(policy: Logps, reference: Logps | None, cfg: Any, ctx: LossContext) -> LossOutput:
        total, metrics = None, {}
        for spec, w in parts:
            out = spec.fn(policy, reference, cfg, ctx)
            total = w * out.losses if total is None else total + w * out.losses
            metrics[f"loss/{spec.name}"] = out.losses.detach()
            for k, v in out.metrics.items():
                metrics.setdefault(k, v)  # the first loss's rewards are the ones reported
        return LossOutput(total, metrics)

    # every part's parameters; defaults only from the first part, whose rewards are reported too
    params = {p.name: Param(p.name, None, p.allowed) for s, _ in parts[1:] for p in s.params}
    params.update({p.name: p for p in parts[0][0].params})
    first = parts[0][0]
    return LossSpec(text, combined, any(s.needs_reference for s, _ in parts), tuple(kinds), first.unit,
                    any(s.has_nll for s, _ in parts), any(s.token_kl for s, _ in parts),
                    any(s.batch_stats for s, _ in parts), tuple(params.values()),
                    " + ".join(f"{w:g}·{s.name}" for s, w in parts), all(s.takes_ties for s, _ in parts))


# ----------------------------------------------------------------------------- shared pieces

def sigmoid_xent(logits: Tensor, target: float) -> Tensor:
    """-[t·log σ(x) + (1-t)·log σ(-x)], stable for large |x|."""
    return -(target * logsigmoid(logits) + (1 - target) * logsigmoid(-logits))


def log_ratios(policy: Logps, reference: Logps) -> Tensor:
    """(G, B) log π(y|x) − log π_ref(y|x) of every response."""
    return policy.sum - reference.sum


def reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Per-pair reward metrics (detached); accuracy counts a tie as wrong, as TRL does."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
    }


def chosen_nll(policy: Logps) -> Tensor:
    """(B,) per-token mean NLL of the first (chosen / best) response: −log π(y_w|x)/|y_w|."""
    return -policy.mean[0]


def masked(values: Tensor, keep: Tensor) -> Tensor:
    """``values`` where ``keep``, NaN elsewhere (a metric that does not apply to that example)."""
    return torch.where(keep, values.detach(), torch.full_like(values, float("nan")))
