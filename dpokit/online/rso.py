"""Statistical rejection sampling (RSO; Liu et al. 2023, "Statistical Rejection Sampling Improves
Preference Optimization", section 3 and algorithm 1).

The policy that a KL-regularised reward maximiser converges to is
    π*(y|x) ∝ π_sft(y|x) · exp(r(x, y) / β)                                   (paper eq. 4)
Candidates drawn from π_sft (here: the round's starting policy) become samples of π* by
rejection sampling with the envelope M = exp(r_max / β), r_max the best reward among the
candidates: a candidate y is accepted with probability exp((r(y) − r_max) / β) ≤ 1.

Here, over a prompt's finite set of candidates: draw one of the remaining candidates uniformly
(the empirical π_sft), accept it with that probability, else put it back and draw again. An
accepted candidate leaves the set (sampling without replacement) and r_max is recomputed over
what remains. So the first accepted answer is exactly distributed as softmax(r / β) over the
candidates, and each next one as softmax(r / β) over those not yet accepted (successive
sampling). A large β accepts nearly uniformly (π* ≈ π_sft); a small β keeps the best answers.
The best remaining candidate is always accepted when drawn, so each acceptance takes at most
about n draws on average and the loop ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass
class RSOResult:
    accepted: list[int]
    """Indices of the accepted candidates, in the order they were accepted."""
    draws: int
    """Proposals made, accepted or not."""


def rejection_sample(rewards: list[float], wanted: int, beta: float, rng: random.Random) -> RSOResult:
    """Accept up to ``wanted`` of the candidates with these rewards, towards π* ∝ π_sft·exp(r/β)."""
    if beta <= 0:
        raise ValueError("beta must be > 0")
    remaining = list(range(len(rewards)))
    accepted: list[int] = []
    draws = 0
    while remaining and len(accepted) < wanted:
        r_max = max(rewards[i] for i in remaining)
        i = remaining[rng.randrange(len(remaining))]
        draws += 1
        if rng.random() < math.exp((rewards[i] - r_max) / beta):
            accepted.append(i)
            remaining.remove(i)
    return RSOResult(accepted, draws)


def successive_probabilities(rewards: list[float], beta: float, order: list[int]) -> float:
    """P(the sampler accepts exactly ``order``, in that order): the product of softmax(r/β) over the
    candidates still remaining at each step. What the statistical test compares against."""
    weights = {i: math.exp((r - max(rewards)) / beta) for i, r in enumerate(rewards)}
    p, left = 1.0, dict(weights)
    for i in order:
        p *= left[i] / sum(left.values())
        del left[i]
    return p
