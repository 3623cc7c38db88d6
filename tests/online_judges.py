"""Programmatic judges for the online tests, importable as ``online_judges:NAME`` (tests/ on the path).

The rule is one the tiny random model can learn from its own samples within a few steps:
answers with more of the letter ``e`` are better. Sampled answers from the random model are
byte-level BPE tokens in roughly even proportions, so the count varies between candidates.
"""

from __future__ import annotations


def count_e(prompt: str, response: str) -> float:
    """Pointwise: the number of ``e`` characters in the answer."""
    return float(response.lower().count("e"))


def prefer_more_e(prompt: str, a: str, b: str) -> float:
    """Pairwise: P(a beats b) is 1 when a has more ``e`` characters, 0 when fewer, ½ on a tie."""
    ca, cb = a.lower().count("e"), b.lower().count("e")
    return 1.0 if ca > cb else 0.0 if ca < cb else 0.5


def always_first(prompt: str, a: str, b: str) -> float:
    """A judge with pure position bias: the first answer always wins."""
    return 1.0


def broken(prompt: str, response: str):
    """A judge that fails on some answers: NaN for two characters, not a number for three or more."""
    return 1.0 if len(response) < 2 else float("nan") if len(response) == 2 else "many"


def count_e_or_nan(prompt: str, response: str) -> float:
    """``count_e``, but a failed judgement (NaN) when the count is odd."""
    n = response.lower().count("e")
    return float("nan") if n % 2 else float(n)
