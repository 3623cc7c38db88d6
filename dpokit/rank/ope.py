"""Off-policy estimates of a target slate policy's click rate from a logging policy's records.

Each logged record i is one shown position: context x_i, position p_i, item a_i, click c_i and the
logger's propensity π₀(a_i | x_i, p_i). With the importance weight w_i = π(a_i | x_i, p_i) / π₀(a_i |
x_i, p_i) (optionally clipped at M: min(w_i, M)), over n records:

    IPS    V = (1/n) Σ w_i c_i
    SNIPS  V = Σ w_i c_i / Σ w_i
    DR     V = (1/n) Σ [ Σ_a π(a | x_i, p_i) q(a, p_i) + w_i (c_i − q(a_i, p_i)) ]

where q is the direct-method click model, a table of the mean click per (position, item) fitted on
the log, shrunk toward the position's mean click by ``prior`` pseudo-records. The estimand is the
click rate per shown position, what ``World.true_values`` calls ``click_rate``. The estimators are
unbiased (IPS, DR) when the click at a position depends on the item there and the context only, as
under the position-based model; under the cascade model a click depends on the items above too, and
they are biased (the simulator shows by how much).

Intervals are normal from the per-record terms (SNIPS by its linearisation
w_i (c_i − V) / mean(w)), and optionally bootstrap percentiles over records.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from dpokit.errors import UserError

BOOTSTRAP_CELLS = 2_000_000  # resampled records held at a time (a few arrays of this many float64)


@dataclass
class Estimate:
    method: str
    value: float
    se: float
    low: float
    high: float
    n: int
    level: float
    boot_low: float | None = None
    boot_high: float | None = None

    def line(self) -> str:
        boot = "" if self.boot_low is None else f"  bootstrap [{self.boot_low:.5f}, {self.boot_high:.5f}]"
        return (f"{self.method:6s} {self.value:.5f}  {self.level:.0%} CI [{self.low:.5f}, {self.high:.5f}]  "
                f"(se {self.se:.5f}){boot}")


@dataclass
class OffPolicyData:
    """A log as arrays: item (n,) and position (n,) indices from 0, click (n,) 0/1, propensity (n,)
    of the logger, and target (n, items): the target policy's π(· | x_i, p_i) at each record."""

    item: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    target: np.ndarray

    def weights(self, clip: float = 0.0) -> np.ndarray:
        w = self.target[np.arange(len(self.item)), self.item] / self.propensity
        return np.minimum(w, clip) if clip > 0 else w


def click_table(data: OffPolicyData, prior: float = 1.0) -> np.ndarray:
    """Direct-method model q (positions, items): mean click per (position, item), shrunk toward the
    position's mean click by ``prior`` pseudo-records (an item never shown there gets that mean)."""
    n_pos, n_items = int(data.position.max()) + 1, data.target.shape[1]
    shown, clicks = np.zeros((n_pos, n_items)), np.zeros((n_pos, n_items))
    np.add.at(shown, (data.position, data.item), 1.0)
    np.add.at(clicks, (data.position, data.item), data.click)
    base = clicks.sum(1, keepdims=True) / np.maximum(shown.sum(1, keepdims=True), 1.0)
    return (clicks + prior * base) / (shown + prior)


def _normal(method: str, value: float, terms: np.ndarray, level: float) -> Estimate:
    n = len(terms)
    se = float(np.std(terms, ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return Estimate(method, float(value), se, float(value - z * se), float(value + z * se), n, level)


def ips(w: np.ndarray, click: np.ndarray, level: float = 0.95) -> Estimate:
    terms = w * click
    return _normal("IPS", terms.mean(), terms, level)


def snips(w: np.ndarray, click: np.ndarray, level: float = 0.95) -> Estimate:
    value = (w * click).sum() / w.sum()
    return _normal("SNIPS", value, w * (click - value) / w.mean(), level)


def doubly_robust(w: np.ndarray, click: np.ndarray, q_logged: np.ndarray, q_target: np.ndarray,
                  level: float = 0.95) -> Estimate:
    terms = q_target + w * (click - q_logged)
    return _normal("DR", terms.mean(), terms, level)


def _evidence_weights(data: OffPolicyData, clip: float) -> np.ndarray:
    w = data.weights(clip)
    if not w.any():  # SNIPS would be 0/0, and IPS's 0 ± 0 no evidence
        raise UserError("the target policy gives probability 0 to every logged item at its position: "
                        "the log holds no evidence about it (try a softmax target)", where="log")
    return w


def estimate(data: OffPolicyData, clip: float = 0.0, level: float = 0.95, bootstrap: int = 0, seed: int = 0,
             prior: float = 1.0) -> list[Estimate]:
    """IPS, SNIPS and DR of the target's click rate, with normal (and bootstrap) intervals."""
    w = _evidence_weights(data, clip)
    q = click_table(data, prior)
    q_logged = q[data.position, data.item]
    q_target = (data.target * q[data.position]).sum(1)
    out = [ips(w, data.click, level), snips(w, data.click, level),
           doubly_robust(w, data.click, q_logged, q_target, level)]
    if bootstrap:
        stats = {"IPS": lambda i: (w[i] * data.click[i]).mean(1),
                 "SNIPS": lambda i: (w[i] * data.click[i]).sum(1) / w[i].sum(1),
                 "DR": lambda i: (q_target[i] + w[i] * (data.click[i] - q_logged[i])).mean(1)}
        for est in out:
            est.boot_low, est.boot_high = bootstrap_interval(stats[est.method], len(w), bootstrap, level, seed)
    return out


def estimate_terms(data: OffPolicyData, method: str, clip: float = 0.0, prior: float = 1.0) -> tuple[float, np.ndarray]:
    """(value, per-record terms) of one estimator (``snips`` or ``dr``): the terms whose spread
    gives its normal interval. Two targets evaluated on one log pair record by record, so the
    difference of their terms gives the interval of the difference of their values."""
    w = _evidence_weights(data, clip)
    if method == "snips":
        value = float((w * data.click).sum() / w.sum())
        return value, w * (data.click - value) / w.mean()
    if method != "dr":
        raise UserError(f"unknown estimator {method!r} (snips or dr)", where="estimator")
    q = click_table(data, prior)
    terms = (data.target * q[data.position]).sum(1) + w * (data.click - q[data.position, data.item])
    return float(terms.mean()), terms


def normal_interval(method: str, value: float, terms: np.ndarray, level: float = 0.95) -> Estimate:
    """A normal interval around ``value`` from the spread of ``terms``."""
    return _normal(method, value, terms, level)


def bootstrap_interval(stat, n: int, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of ``stat`` (index matrix (resamples, n) -> values) over records drawn with
    replacement. The data's fitted click table is kept fixed: the resampling covers the terms'
    noise, not the model fit's."""
    rng = np.random.default_rng(seed)
    values, chunk = [], max(1, BOOTSTRAP_CELLS // n)
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        values.append(stat(idx))
    values = np.concatenate(values)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))
