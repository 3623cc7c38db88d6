"""The click simulator: exact propensities and true values against hand-derived numbers, a naive
enumeration of every ordered slate, and Monte Carlo logs of the same world."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dpokit.config.rank import SimulateConfig
from dpokit.errors import UserError
from dpokit.rank.simulate import SlatePolicy, World, greedy_logits, prefix_walk, ranker_scorer


def naive_slates(logits, k, attract):
    """Every ordered slate with its Plackett–Luce probability, summed into marginals and the
    cascade user's expected click per position, by brute force."""
    n = len(logits)
    w = np.exp(logits)
    marg, casc = np.zeros((k, n)), np.zeros(k)
    for slate in itertools.permutations(range(n), k):
        prob, left = 1.0, w.sum()
        for a in slate:
            prob *= w[a] / left
            left -= w[a]
        reach = 1.0
        for p, a in enumerate(slate):
            marg[p, a] += prob
            casc[p] += prob * reach * attract[a]
            reach *= 1 - attract[a]
    return marg, casc


def test_prefix_walk_by_hand():
    """Weights 1, 2, 3: P(item 0 first) = 1/6; P(item 0 second) = (2/6)(1/4) + (3/6)(1/3) = 1/4.
    Cascade with α = (0.5, 0, 0): a click at 1 is P(item 0 first)·0.5 = 1/12; at 2 it is
    P(item 0 second)·0.5 = 1/8 (the first item, another one, is never clicked)."""
    marg, casc = prefix_walk(np.log([1.0, 2.0, 3.0]), 2, np.array([0.5, 0.0, 0.0]))
    assert marg[0] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert marg[1, 0] == pytest.approx(1 / 4)
    assert marg.sum(1) == pytest.approx([1, 1])
    assert casc == pytest.approx([1 / 12, 1 / 8])


def test_prefix_walk_equals_naive_enumeration():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 4):
        logits, attract = rng.normal(size=6), rng.uniform(size=6)
        marg, casc = prefix_walk(logits, k, attract)
        want_marg, want_casc = naive_slates(logits, k, attract)
        np.testing.assert_allclose(marg, want_marg, atol=1e-12)
        np.testing.assert_allclose(casc, want_casc, atol=1e-12)


def test_epsilon_greedy_propensities_in_closed_form():
    """(1 − ε)·1[a is the p-th best] + ε/n (the uniform slate puts each item at each position with 1/n)."""
    world = World(SimulateConfig(logger="epsilon", epsilon=0.3, items=7, users=5).validate())
    policy = world.logger()
    probs = policy.position_probs([world.context(u) for u in range(5)], 3)
    for u in range(5):
        top = np.argsort(-world.logger_scores[u])[:3]
        want = np.full((3, 7), 0.3 / 7)
        want[np.arange(3), top] += 0.7
        np.testing.assert_allclose(probs[u], want, atol=1e-12)


@pytest.mark.parametrize("click_model", ["pbm", "cascade"])
def test_true_click_rate_matches_monte_carlo(click_model):
    """The exact click rate (overall and per position) against 30 000 sampled slates, within 4
    standard errors; the propensities written equal the policy's exact marginals."""
    world = World(SimulateConfig(click_model=click_model, users=40, seed=5).validate())
    truth = world.true_values(world.logger())
    records = world.sample_log(30000, seed=2)
    clicks = np.array([r["click"] for r in records], dtype=float)
    se = clicks.std() / math.sqrt(len(clicks))
    assert abs(clicks.mean() - truth["click_rate"]) < 4 * se
    for p, want in enumerate(truth["click_rate_by_position"], 1):
        at_p = np.array([r["click"] for r in records if r["position"] == p], dtype=float)
        assert abs(at_p.mean() - want) < 4 * at_p.std() / math.sqrt(len(at_p)) + 1e-9
    probs = world.logger().position_probs([world.context(u) for u in range(40)], 3)
    r = records[7]
    assert r["propensity"] == pytest.approx(probs[world.user(r["context"]), r["position"] - 1,
                                                     world.item_ids.index(r["item"])])


def test_ndcg_and_hit_rate_of_known_rankers():
    """Ranking by the true attractiveness is ideal (NDCG 1, HR 1); by its negative, HR is 0 and NDCG
    is the worst slate's DCG over the ideal's, computed here by hand."""
    world = World(SimulateConfig(users=10, items=8).validate())
    best = world.true_values(SlatePolicy(lambda cs: world.attract[[world.user(c) for c in cs]]))
    assert best["ndcg@3"] == pytest.approx(1.0) and best["hr@3"] == pytest.approx(1.0)
    worst = world.true_values(SlatePolicy(lambda cs: -world.attract[[world.user(c) for c in cs]]))
    disc = 1 / np.log2([2, 3, 4])
    want = np.mean([np.sort(a)[:3] @ disc / (np.sort(a)[::-1][:3] @ disc) for a in world.attract])
    assert worst["hr@3"] == 0.0 and worst["ndcg@3"] == pytest.approx(want)
    assert worst["click_rate"] < best["click_rate"]


def test_ranker_folder_scores_through_the_policy(tmp_path):
    """A ranker folder scores the world's contexts; its greedy policy's true values equal those of
    the same scores given as a callable (computed by the policy's own log-probs, up to a constant)."""
    from dpokit.policies.ranker import _hash, load_ranker, write_ranker

    world = World(SimulateConfig(users=12, items=9).validate())
    folder = write_ranker(tmp_path / "r", world.item_table()[::-1], buckets=256, dim=4, seed=1,
                          **world.ranker_columns())
    scorer = ranker_scorer(folder, world.item_ids)
    scores = scorer([world.context(u) for u in range(12)])
    assert scores.shape == (12, 9)
    module = load_ranker(str(folder))
    s = module.settings
    for u in (0, 5):  # one context, all items: forward row by row, reordered from the reversed table
        ctx = world.context(u)
        num = [[ctx[c] for c in s["context_numeric"]]]
        cat = [[_hash(f"{c}={ctx[c]}", s["buckets"]) for c in s["context_categorical"]]]
        rows = [[it["id"] for it in module.items].index(i) for i in world.item_ids]
        want = module(torch.tensor(num), torch.tensor(cat), torch.tensor(rows)).detach().numpy()
        np.testing.assert_allclose(scores[u], want, rtol=1e-5, atol=1e-6)
    a = world.true_values(SlatePolicy(scorer))
    b = world.true_values(SlatePolicy(lambda cs: scores[[world.user(c) for c in cs]]))
    assert a == b


def test_bad_settings_and_missing_items(tmp_path):
    with pytest.raises(UserError, match="slate"):
        SimulateConfig(slate=6).validate()
    with pytest.raises(UserError, match="epsilon"):
        SimulateConfig(logger="epsilon", epsilon=0).validate()
    from dpokit.policies.ranker import write_ranker

    world = World(SimulateConfig(users=3, items=5).validate())
    folder = write_ranker(tmp_path / "r", world.item_table()[:4], buckets=64, dim=2, **world.ranker_columns())
    with pytest.raises(UserError, match="lacks item 'i4'"):
        ranker_scorer(folder, world.item_ids)
    with pytest.raises(UserError, match="need 1e\\+09 cells at position 3"):  # 1000·999 prefixes × 1000 items
        prefix_walk(np.zeros(1000), 3, np.zeros(1000))
    greedy, _ = prefix_walk(greedy_logits(np.arange(1000.0)), 3, np.zeros(1000))  # one prefix: cheap
    assert [int(np.argmax(row)) for row in greedy] == [999, 998, 997] and greedy.max(1).tolist() == [1, 1, 1]
