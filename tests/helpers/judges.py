"""Programmatic judges for the online tests, importable as ``helpers.judges:NAME`` (tests/ on the path).

The rules are ones the tiny random model can learn from its own samples within a few steps,
e.g. answers with more of the letter ``e`` are better. Sampled answers from the random model are
byte-level BPE tokens in roughly even proportions, so the count varies between candidates.
"""

from __future__ import annotations


def count_e(prompt: str, response: str) -> float:
    """Pointwise: the number of ``e`` characters in the answer."""
    return float(response.lower().count("e"))


def count_k(prompt: str, response: str) -> float:
    """Pointwise: the number of ``k`` characters in the answer. A rule the initial random model
    rarely satisfies: 25 of the tiny tokenizer's 1,024 tokens contain a ``k`` (``e``: 325), so its
    answers hold about 0.2 on average and most first-round pairs are one ``k`` against none. The
    score is graded (every further ``k`` counts), so a policy that has learned some keeps getting
    pairs that teach more; the online-vs-offline evidence (tests/test_online_evidence.py) uses it."""
    return float(response.lower().count("k"))


def count_kvw(prompt: str, response: str) -> float:
    """Pointwise: ``k``, ``v`` and ``w`` characters together (108 tokens hold one, so the initial
    model shows about one per answer): a second, commoner rule for the benchmark."""
    lowered = response.lower()
    return float(sum(lowered.count(c) for c in "kvw"))


def count_exclamations(prompt: str, response: str) -> float:
    """Pointwise: the number of ``!`` in the answer, a rule for the embedded SmolLM2-135M-Instruct.
    Its sampled answers to "Tell me about X." rarely exclaim (8 of 64 answers of 32 tokens held a
    ``!``), the rule is graded, and the model already knows where exclamations fit."""
    return float(response.count("!"))


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


def raises_on_p1(prompt: str, response: str) -> float:
    """``count_e``, but raising (as a buggy user judge would) on the prompt ``P1``."""
    if prompt == "P1":
        raise ValueError("cannot judge P1")
    return count_e(prompt, response)


def always_raises(prompt: str, a: str, b: str) -> float:
    """A pairwise judge that fails on everything."""
    raise ZeroDivisionError("division by zero")


def count_e_then_stop(prompt: str, response: str) -> float:
    """``count_e`` that sends its own process SIGTERM at its ``STOP_JUDGE_AT``-th call (an
    environment variable; never when unset): a stop that lands inside judging."""
    import os
    import signal

    global _calls
    _calls += 1
    if str(_calls) == os.environ.get("STOP_JUDGE_AT"):
        os.kill(os.getpid(), signal.SIGTERM)
    return count_e(prompt, response)


_calls = 0
