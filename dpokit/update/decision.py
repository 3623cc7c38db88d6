"""The written rule that promotes a challenger or keeps the champion.

A challenger is promoted only when every test passes; each failed test gives one reason, so a
refusal is recorded with all that was wrong, not just the first thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DecisionRule:
    win_margin: float = 0.02
    """The lower end of the win-rate interval must exceed 0.5 plus this."""
    max_kl: float = 5.0
    """The sampled KL of the challenger to the champion (nats per answer) must stay under this."""
    acc_drop: float = 0.05
    """Held-out pair accuracy may fall by at most this much below the champion's."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def decide(rule: DecisionRule, figures: dict) -> tuple[bool, list[str]]:
    """(promote, reasons) from ``figures``: ``win_low`` (the interval's lower end), ``kl``, and
    optionally ``pairs``, {file: {"challenger": accuracy, "champion": accuracy}} on held-out pairs.
    A missing or non-finite figure that a test needs refuses: an update never promotes on numbers
    it does not have."""
    reasons = []
    low = figures.get("win_low")
    if not _finite(low):
        reasons.append("no win-rate interval")
    elif low <= 0.5 + rule.win_margin:
        reasons.append(f"win-rate interval low {low:.3f} <= 0.5 + margin {rule.win_margin:g}")
    kl = figures.get("kl")
    if not _finite(kl):
        reasons.append("no sampled KL to the champion")
    elif kl >= rule.max_kl:
        reasons.append(f"KL to champion {kl:.3f} >= bound {rule.max_kl:g}")
    for name, acc in (figures.get("pairs") or {}).items():
        new, old = acc.get("challenger"), acc.get("champion")
        if not (_finite(new) and _finite(old)):
            reasons.append(f"held-out pair accuracy on {name} missing for one side")
        elif old - new > rule.acc_drop:
            reasons.append(f"held-out pair accuracy on {name} fell {old - new:.3f} (from {old:.3f} to {new:.3f}) "
                           f"> tolerance {rule.acc_drop:g}")
    return not reasons, reasons
