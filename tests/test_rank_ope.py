"""Off-policy estimators: hand-computed values on a 5-record log, and on the simulator, intervals
that cover the true click rate of a target policy unlike the logger (and miss it when the
propensities are wrong, so the check can fail)."""

from __future__ import annotations

import numpy as np
import pytest

from dpokit.config.rank import SimulateConfig
from dpokit.rank.logs import off_policy_data, parse_logged
from dpokit.rank.ope import OffPolicyData, click_table, estimate
from dpokit.rank.simulate import SlatePolicy, World


def five_records() -> OffPolicyData:
    """2 items, 2 positions. Target probabilities of the logged item: .5 .5 1 .25 .5; logger
    propensities .25 .5 .5 .5 .25, so weights w = 2 1 2 .5 2; clicks 1 0 1 0 1."""
    target = np.array([[.5, .5], [.5, .5], [0, 1], [.75, .25], [.5, .5]])
    return OffPolicyData(item=np.array([0, 1, 1, 1, 0]), position=np.array([0, 0, 1, 1, 0]),
                         click=np.array([1., 0, 1, 0, 1]), propensity=np.array([.25, .5, .5, .5, .25]),
                         target=target)


def test_five_records_by_hand():
    """IPS = (2 + 0 + 2 + 0 + 2)/5 = 1.2; SNIPS = 6 / 7.5 = 0.8.
    Click table (prior 1): position 0 saw item 0 twice (2 clicks), item 1 once (0); its mean is 2/3,
    so q(0,0) = (2 + 2/3)/3 = 8/9, q(0,1) = (0 + 2/3)/2 = 1/3. Position 1 saw item 1 twice (1 click),
    mean 1/2: q(1,0) = (0 + 1/2)/1 = 1/2, q(1,1) = (1 + 1/2)/3 = 1/2.
    DR terms Σ_a π q + w (c − q), where Σ_a π q at position 0 is .5·8/9 + .5/3 = 11/18: r1 11/18 +
    2(1 − 8/9) = 5/6; r2 11/18 + 1·(0 − 1/3) = 5/18; r3 1/2 + 2(1 − 1/2) = 3/2; r4 (.75 + .25)/2 +
    .5(0 − 1/2) = 1/4; r5 = r1 = 5/6. Mean = (5/6 + 5/18 + 3/2 + 1/4 + 5/6)/5 = 0.73889."""
    data = five_records()
    q = click_table(data)
    np.testing.assert_allclose(q, [[8 / 9, 1 / 3], [1 / 2, 1 / 2]])
    ips, snips, dr = estimate(data)
    assert ips.value == pytest.approx(1.2)
    assert snips.value == pytest.approx(0.8)
    assert dr.value == pytest.approx((5 / 6 + 5 / 18 + 3 / 2 + 1 / 4 + 5 / 6) / 5)
    terms = np.array([2, 0, 2, 0, 2.0])  # IPS's normal interval: the sample sd of the terms / √5
    assert ips.se == pytest.approx(terms.std(ddof=1) / np.sqrt(5))
    assert ips.low == pytest.approx(1.2 - 1.959964 * ips.se, rel=1e-5)
    clipped = estimate(data, clip=1.5)[0]  # weights 1.5 1 1.5 .5 1.5: IPS = 4.5/5
    assert clipped.value == pytest.approx(0.9)


def naive_ips(records, target_probs, world):
    """IPS record by record from the dicts, without the arrays."""
    total = 0.0
    for r in records:
        u, p, a = world.user(r["context"]), r["position"] - 1, world.item_ids.index(r["item"])
        total += target_probs[u, p, a] / r["propensity"] * r["click"]
    return total / len(records)


@pytest.fixture(scope="module")
def sim():
    world = World(SimulateConfig(users=50, items=12, seed=11).validate())
    sharp = SlatePolicy(lambda cs: world.attract[[world.user(c) for c in cs]] * 20.0, "softmax")
    return world, sharp, world.true_values(sharp)["click_rate"], world.true_values(world.logger())["click_rate"]


def arrays(world, policy, records, propensity=None):
    logged = [parse_logged(r, f"sim:{i}", set(world.item_ids), ()) for i, r in enumerate(records)]
    data = off_policy_data(logged, policy, world.item_ids)
    if propensity is not None:
        data.propensity = np.full(len(records), propensity)
    return data


def test_intervals_cover_the_true_value_of_another_policy(sim):
    """A target that ranks by the true attractiveness (softmax of 20α) clicks far more than the
    logger. On 20 000 logged slates each estimate's 95% interval holds the exact value, and the
    interval is narrow against the gap to the logger's rate, so an estimator that returned the
    logger's rate (or missed by half the gap) would fail. IPS equals a record-by-record sum."""
    world, target, true, logged_rate = sim
    assert true - logged_rate > 0.05
    records = world.sample_log(20000, seed=3)
    data = arrays(world, target, records)
    probs = target.position_probs([world.context(u) for u in range(50)], 3)
    estimates = estimate(data, bootstrap=200)
    assert estimates[0].value == pytest.approx(naive_ips(records, probs, world))
    for est in estimates:
        assert est.low <= true <= est.high, est.line()
        assert est.high - est.low < (true - logged_rate) / 2, est.line()
        assert est.boot_low <= true <= est.boot_high, est.line()
        assert abs((est.boot_high - est.boot_low) / (est.high - est.low) - 1) < 0.25


def test_coverage_over_replicate_logs(sim):
    """40 logs of 1 500 slates: each estimator's 95% interval covers the true value in at least 34
    (a correct interval misses more than 6 of 40 with probability about 2%; at 80% coverage that
    rises to a half)."""
    world, target, true, _ = sim
    hits = np.zeros(3)
    for rep in range(40):
        data = arrays(world, target, world.sample_log(1500, seed=100 + rep))
        hits += [e.low <= true <= e.high for e in estimate(data)]
    assert (hits >= 34).all(), hits


def test_wrong_propensities_give_a_biased_estimate(sim):
    """The same log with every propensity taken as uniform (1/12) instead of the softmax logger's:
    IPS and SNIPS miss the true value by more than their intervals allow."""
    world, target, true, _ = sim
    data = arrays(world, target, world.sample_log(20000, seed=3), propensity=1 / 12)
    ips, snips, _ = estimate(data)
    assert not ips.low <= true <= ips.high and not snips.low <= true <= snips.high
    assert abs(ips.value - true) > 3 * ips.se


def test_cascade_clicks_bias_the_per_position_estimators():
    """Under the cascade model a click depends on the items above, which the per-position weight
    ignores: IPS's interval misses the exact value, which it covers under pbm (same world, seed)."""
    out = {}
    for model in ("pbm", "cascade"):
        world = World(SimulateConfig(users=50, items=12, seed=11, click_model=model).validate())
        target = SlatePolicy(lambda cs, w=world: w.attract[[w.user(c) for c in cs]] * 20.0, "softmax")
        true = world.true_values(target)["click_rate"]
        ips = estimate(arrays(world, target, world.sample_log(20000, seed=3)))[0]
        out[model] = ips.low <= true <= ips.high
    assert out == {"pbm": True, "cascade": False}
