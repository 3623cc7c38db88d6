"""RSO sampling (dpokit/online/rso.py): the accepted answers follow π* ∝ π_sft·exp(r/β), and an
online round with ``--sampling rso --loss rso`` trains on pairs of accepted answers only."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.online import OnlineConfig
from dpokit.online.loop import rso_select
from dpokit.online.pairs import Candidates
from dpokit.online.rso import rejection_sample, successive_probabilities
from helpers.data import read_jsonl
from helpers.online import tiny_online

REWARDS = [0.0, 0.5, 1.0, 2.0, 3.0]
RUNS = 20_000


def test_acceptance_frequencies_match_the_target():
    """On a fixed candidate set (π_sft uniform over it) with known rewards, over 20,000 seeds:

    - the first accepted answer is distributed as softmax(r/β): each frequency is within 4.5
      binomial standard errors sqrt(p(1−p)/N) of its probability. A correct sampler lands outside
      with probability about 7e-6 per answer (normal approximation; the smallest expected count
      here is about 800, so it holds), while a biased one misses by far more: e.g. accepting the
      first success of one pass in random order gives the best of two answers 0.75 instead of 2/3;
    - the ordered pairs of accepted answers follow successive sampling without replacement: a
      chi-square test over the 20 ordered pairs stays below the 0.999 quantile of χ²(19), 43.82.
    Seeds are fixed, so the test is deterministic; the tolerances say why it is not luck."""
    beta = 1.0
    first, ordered = [0] * len(REWARDS), {}
    for seed in range(RUNS):
        accepted = rejection_sample(REWARDS, 2, beta, random.Random(seed)).accepted
        first[accepted[0]] += 1
        ordered[tuple(accepted)] = ordered.get(tuple(accepted), 0) + 1
    weights = [math.exp(r / beta) for r in REWARDS]
    for i, w in enumerate(weights):
        p = w / sum(weights)
        assert abs(first[i] / RUNS - p) <= 4.5 * math.sqrt(p * (1 - p) / RUNS), (i, first[i] / RUNS, p)
    chi2 = 0.0
    for pair in itertools.permutations(range(len(REWARDS)), 2):
        expected = RUNS * successive_probabilities(REWARDS, beta, list(pair))
        chi2 += (ordered.get(pair, 0) - expected) ** 2 / expected
    assert chi2 < 43.82, chi2


def test_beta_limits_and_exhaustion():
    rng = random.Random(0)
    # a tiny β keeps the best answers, in order; a huge β accepts nearly uniformly
    assert rejection_sample(REWARDS, 2, 1e-3, rng).accepted == [4, 3]
    firsts = [rejection_sample(REWARDS, 1, 1e6, random.Random(s)).accepted[0] for s in range(5000)]
    assert all(abs(firsts.count(i) / 5000 - 0.2) < 0.03 for i in range(5))
    # asking for more than there are accepts every candidate once
    result = rejection_sample([1.0, 1.0, 0.0], 5, 0.5, rng)
    assert sorted(result.accepted) == [0, 1, 2] and result.draws >= 3
    assert rejection_sample([], 2, 1.0, rng).accepted == []
    with pytest.raises(ValueError):
        rejection_sample(REWARDS, 2, 0.0, rng)


def test_rso_select_skips_unusable_answers_and_counts():
    items = [Candidates("p", ["a", "", "b", "c", "d"], [1.0, 9.0, None, 2.0, 0.0]),
             Candidates("q", ["x", "y"], [1.0, 1.0])]
    counts = rso_select(items, 2, 0.5, seed=0)
    assert set(items[0].selected) <= {0, 3, 4} and len(items[0].selected) == 2  # not the empty or failed answer
    assert items[1].selected == [0, 1]
    assert counts["rso_rejected"] == 1 and counts["rso_draws"] >= 4
    assert items[0].usable() == items[0].selected


def test_rso_config_checks(tmp_path):
    base = {"online.prompts": "p.jsonl", "online.judge": "helpers.judges:count_e", "model.path": "m",
            "train.output": str(tmp_path), "online.sampling": "rso"}
    for override, field in (({"online.rso_beta": 0.0}, "online.rso_beta"),
                            ({"online.rso_accept": 4}, "online.rso_accept"),
                            ({"online.rso_accept": 1}, "online.rso_accept")):
        with pytest.raises(UserError, match=field.replace(".", r"\.")):
            load_config(None, {**base, **override}, root=OnlineConfig)


def test_online_round_with_rso_sampling(tmp_path):
    """One round: 6 answers per prompt, 3 accepted by RSO, the best against the worst of those."""
    out = tmp_path / "rso"
    lines: list[str] = []
    entry = tiny_online(tmp_path, out, lines.append, online__sampling="rso", online__rso_beta=1.0, online__samples_per_prompt=6,
                        online__rso_accept=3, loss__name="rso").rounds[0]
    cands, pairs = read_jsonl(out / "round-1" / "candidates.jsonl"), read_jsonl(out / "round-1" / "pairs.jsonl")
    usable = sum(sum(1 for a, s in zip(c["answers"], c["scores"]) if a.strip() and s is not None) for c in cands)
    assert all(len(c["accepted"]) == 3 for c in cands) and usable >= 30  # few empty answers in 8 tokens
    assert entry["rso_rejected"] == usable - 18 > 0
    assert any(line.endswith(f"{entry['rso_rejected']} rejected by RSO") for line in lines), lines
    assert entry["pairs"] == len(pairs) >= 1 and entry["candidates"] == 36
    for c in cands:
        accepted = [c["answers"][i] for i in c["accepted"]]
        mine = [p for p in pairs if p["prompt"] == c["prompt"]]
        assert all(p["chosen"][0]["content"] in accepted and p["rejected"][0]["content"] in accepted for p in mine)
    stats = json.loads((out / "round-1" / "sampling.json").read_text())
    assert stats["rso_draws"] >= sum(len(c["accepted"]) for c in cands)
