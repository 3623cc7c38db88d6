"""The losses of pairwise.py, transport.py and GPO (margin.py): hand-derived values, a naive
implementation (floats one pair at a time for values, a separate float64 torch graph for
gradients), the limits where they meet other losses, the formulas of TRL's DPOTrainer for the
losses it has, and BCO's running shift δ.

TRL's formulas below were re-derived from reading its ``DPOTrainer`` (trl/trainer/dpo_trainer.py,
the ``loss_type`` branches of its loss computation) and written here in batch form over its
inputs: summed log-probs of chosen / rejected answers under the policy and the reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.losses import LossContext, Logps, get_loss
from test_loss_family import cfg, logps, one, random_pairs, run, sp

NEW = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "aot", "aot_unpaired",
       "gpo"]
GPO_FNS = ["logistic", "hinge", "squared", "exponential", "truncated_quadratic", "savage"]


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ----------------------------------------------------------------------------- hand-derived values

HAND = [
    # each derived in the loss's docstring
    ("exo_pair", one(-1.0, -1.0), one(-1.0, -1.0), {}, 2.761231),
    ("nca_pair", one(0.0, 0.0), one(0.0, 0.0), {}, 2 * math.log(2)),
    ("nca_pair", one(10.0, -10.0), one(0.0, 0.0), {}, 1.126523),
    ("bco_pair", one(3.0, -1.0), one(0.0, 0.0), {}, 1.196278),
    ("sppo_hard", one(1.0, -1.0), one(0.0, 0.0), {}, 32.0),
    ("apo_zero", one(10.0, -10.0), one(0.0, 0.0), {}, 0.537883),
    ("apo_down", one(0.0, -10.0), one(0.0, 0.0), {}, 0.768941),
    ("discopop", one(0.0, 0.0), one(0.0, 0.0), {}, 0.846574),
    ("discopop", one(1.0, 0.0), one(0.0, 0.0), {"discopop_tau": 0.1}, 0.834794),
] + [("gpo", one(5.0, 0.0), one(0.0, 0.0), {"gpo_fn": fn}, value) for fn, value in zip(
    GPO_FNS, (0.474077, 0.5, 0.25, 0.606531, 0.25, 0.142537))]


@pytest.mark.parametrize("name,pol,ref,kw,expected", HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_derived_values(name, pol, ref, kw, expected):
    out = run(name, logps(pol), logps(ref), **kw)
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * (pol[0][0][0] - ref[0][0][0]))


def test_aot_hand_values_sort_the_batch():
    """Paired: margins m = (2, −1), reference margins (0, 1), β = 1 → sorted Δ = (−1, 1) →
    (log(1 + e), log(1 + e^−1)); DPO on the same pairs gives (softplus(−2), softplus(2)).
    Unpaired: r_w = (0, 3), r_l = (1, −1) → Δ = (1, 2)."""
    out = run("aot", logps([[[2.0], [-1.0]], [[0.0], [0.0]]]), logps([[[0.0], [1.0]], [[0.0], [0.0]]]), beta=1.0)
    assert out.losses.tolist() == pytest.approx([1.313262, 0.313262], abs=1e-6)
    dpo = run("sigmoid", logps([[[2.0], [-1.0]], [[0.0], [0.0]]]), logps([[[0.0], [1.0]], [[0.0], [0.0]]]), beta=1.0)
    assert dpo.losses.tolist() == pytest.approx([0.126928, 2.126928], abs=1e-6)
    out = run("aot_unpaired", logps([[[0.0], [3.0]], [[1.0], [-1.0]]]), logps([[[0.0], [0.0]], [[0.0], [0.0]]]),
              beta=1.0)
    assert out.losses.tolist() == pytest.approx([0.313262, 0.126928], abs=1e-6)
    assert out.metrics["rewards/chosen"].tolist() == [0.0, 3.0]  # per record, not sorted


def test_bco_delta_is_a_running_mean_kept_in_state():
    """β = 0.1. Batch 1: rewards (0.3, −0.1) → δ = 0.1 (the docstring's example). Batch 2: two
    pairs, rewards w (0.5, 0.1), l (0.1, −0.1) → batch mean 0.15, δ = 0.1 + (0.15 − 0.1)/2 = 0.125,
    L_1 = −log σ(0.375) − log σ(−(0.1 − 0.125)) = 0.523123 + 0.680725 = 1.203849. Evaluation reads δ, does not move it."""
    state: dict = {}
    run("bco_pair", logps(one(3.0, -1.0)), logps(one(0.0, 0.0)), state=state)
    assert state == {"bco/delta": pytest.approx(0.1), "bco/batches": 1}
    out = run("bco_pair", logps([[[5.0], [1.0]], [[1.0], [-1.0]]]), logps([[[0.0], [0.0]], [[0.0], [0.0]]]),
              state=state)
    assert state["bco/delta"] == pytest.approx(0.125) and state["bco/batches"] == 2
    assert out.metrics["bco/delta"].tolist() == pytest.approx([0.125, 0.125])
    assert out.losses[0].item() == pytest.approx(sp(0.375) + sp(0.025), abs=1e-9)
    assert sp(0.375) + sp(0.025) == pytest.approx(1.203849, abs=1e-6)
    run("bco_pair", logps(one(90.0, 0.0)), logps(one(0.0, 0.0)), state=state, training=False)
    assert state["bco/delta"] == pytest.approx(0.125) and state["bco/batches"] == 2


# ----------------------------------------------------------------------------- naive implementations

def gpo_f(fn: str, x: float) -> float:
    return {"logistic": lambda: math.log(1 + math.exp(-x)), "hinge": lambda: max(0.0, 1 - x),
            "squared": lambda: (x - 1) ** 2, "exponential": lambda: math.exp(-x),
            "truncated_quadratic": lambda: max(0.0, 1 - x) ** 2, "savage": lambda: 1 / (1 + math.exp(x)) ** 2}[fn]()


def naive_pair(name: str, a: float, b_: float, c) -> float:
    """One pair from the papers' equations: a, b_ = chosen, rejected log ratios (summed)."""
    b = c.beta
    z = b * (a - b_)
    if name == "exo_pair":
        e = c.exo_epsilon
        return sig(z) * math.log(sig(z) / (1 - e)) + sig(-z) * math.log(sig(-z) / e)
    if name == "nca_pair":
        return -math.log(sig(b * a)) - 0.5 * math.log(1 - sig(b * a)) - 0.5 * math.log(1 - sig(b * b_))
    if name == "sppo_hard":
        return (a - 1 / (2 * b)) ** 2 + (b_ + 1 / (2 * b)) ** 2
    if name == "apo_zero":
        return 1 - sig(b * a) + sig(b * b_)
    if name == "apo_down":
        return sig(b * a) + 1 - sig(z)
    if name == "discopop":
        m = sig(z / c.discopop_tau)
        return (1 - m) * math.log(1 + math.exp(-z)) + m * math.exp(-z)
    if name == "gpo":
        return gpo_f(c.gpo_fn, z)
    raise KeyError(name)


def naive_batch(name: str, pw, pl, rw, rl, c) -> list[float]:
    """Whole-batch losses (lists of summed log-probs): per-pair ones, BCO with δ of a first
    batch, AOT by sorting Python lists."""
    a = [x - y for x, y in zip(pw, rw)]
    d = [x - y for x, y in zip(pl, rl)]
    if name == "bco_pair":
        delta = sum(c.beta * x for x in a + d) / (2 * len(a))
        return [-math.log(sig(c.beta * x - delta)) - math.log(1 - sig(c.beta * y - delta)) for x, y in zip(a, d)]
    if name in ("aot", "aot_unpaired"):
        if name == "aot":
            top, bottom = sorted(x - y for x, y in zip(pw, pl)), sorted(x - y for x, y in zip(rw, rl))
        else:
            top, bottom = sorted(a), sorted(d)
        e = c.label_smoothing
        return [(1 - e) * sp(c.beta * (t - s)) + e * sp(-c.beta * (t - s)) for t, s in zip(top, bottom)]
    return [naive_pair(name, x, y, c) for x, y in zip(a, d)]


def naive_graph(name: str, tokens, mask, ref, c) -> torch.Tensor:
    """The same equations as a separate float64 torch graph (sigmoid / log / exp written out)."""
    m = mask.double()
    s, rs = (tokens * m).sum(-1), (ref * m).sum(-1)
    a, d, b = s[0] - rs[0], s[1] - rs[1], c.beta
    z = b * (a - d)
    S = torch.sigmoid
    if name == "bco_pair":
        delta = (b * torch.cat([a, d])).mean().detach()
        return -torch.log(S(b * a - delta)) - torch.log(1 - S(b * d - delta))
    if name in ("aot", "aot_unpaired"):
        top, bottom = (s[0] - s[1], rs[0] - rs[1]) if name == "aot" else (a, d)
        order = lambda v: torch.tensor(sorted(range(len(v)), key=lambda i: v[i].item()))
        delta = top[order(top)] - bottom[order(bottom)]
        e = c.label_smoothing
        return -(1 - e) * torch.log(S(b * delta)) - e * torch.log(S(-b * delta))
    if name == "gpo":
        return {"logistic": lambda: torch.log(1 + torch.exp(-z)), "hinge": lambda: torch.relu(1 - z),
                "squared": lambda: (z - 1) ** 2, "exponential": lambda: torch.exp(-z),
                "truncated_quadratic": lambda: torch.relu(1 - z) ** 2,
                "savage": lambda: (1 + torch.exp(z)) ** -2}[c.gpo_fn]()
    table = {
        "exo_pair": lambda: S(z) * torch.log(S(z) / (1 - c.exo_epsilon)) + S(-z) * torch.log(S(-z) / c.exo_epsilon),
        "nca_pair": lambda: -torch.log(S(b * a)) - 0.5 * torch.log(1 - S(b * a)) - 0.5 * torch.log(1 - S(b * d)),
        "sppo_hard": lambda: (a - 0.5 / b) ** 2 + (d + 0.5 / b) ** 2,
        "apo_zero": lambda: 1 - S(b * a) + S(b * d),
        "apo_down": lambda: S(b * a) + 1 - S(z),
        "discopop": lambda: (1 - S(z / c.discopop_tau)) * torch.log(1 + torch.exp(-z))
        + S(z / c.discopop_tau) * torch.exp(-z),
    }
    return table[name]()


CASES = [(n, {}) for n in NEW if n != "gpo"] + [("gpo", {"gpo_fn": fn}) for fn in GPO_FNS]
SETTINGS = [{}, {"beta": 0.5, "label_smoothing": 0.2, "exo_epsilon": 0.1, "discopop_tau": 1.5}]


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{kw.get('gpo_fn', '')}" for n, kw in CASES])
def test_match_naive_values_and_gradients(name, kw, setting):
    raw, mask, ref = random_pairs(seed=len(name) * 13 + len(kw.get("gpo_fn", "")) + setting, B=9)
    c = cfg(name=name, **SETTINGS[setting], **kw)
    policy = Logps(raw.masked_fill(~mask, 0.0), mask)
    out = get_loss(name).fn(policy, ref, c, LossContext())
    s, r = policy.sum.detach().tolist(), ref.sum.tolist()
    expected = naive_batch(name, s[0], s[1], r[0], r[1], c)
    torch.testing.assert_close(out.losses.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    (grad,) = torch.autograd.grad(out.losses.sum(), raw)
    raw2 = raw.detach().clone().requires_grad_(True)
    (grad_naive,) = torch.autograd.grad(naive_graph(name, raw2, mask, ref.tokens, c).sum(), raw2)
    torch.testing.assert_close(grad, grad_naive, atol=1e-9, rtol=1e-7)
    assert (grad[~mask] == 0).all() and grad[mask].abs().sum() > 0


# ----------------------------------------------------------------------------- limits and equivalences

def _values_and_grads(name: str, raw, mask, ref, **kw):
    raw_i = raw.detach().clone().requires_grad_(True)
    out = get_loss(name).fn(Logps(raw_i.masked_fill(~mask, 0.0), mask), ref, cfg(name=name, **kw), LossContext())
    (grad,) = torch.autograd.grad(out.losses.sum(), raw_i)
    return out.losses.detach(), grad


@pytest.mark.parametrize("name,kw,other,other_kw,scale", [
    ("gpo", {"gpo_fn": "logistic", "beta": 0.3}, "sigmoid", {"beta": 0.3}, 1.0),
    ("gpo", {"gpo_fn": "hinge", "beta": 1.0}, "hinge", {"hinge_margin": 1.0}, 1.0),
    ("gpo", {"gpo_fn": "hinge", "beta": 0.25}, "hinge", {"hinge_margin": 4.0}, 0.25),
    ("gpo", {"gpo_fn": "squared", "beta": 1.0}, "ipo", {"beta": 0.5, "ipo_average": False}, 1.0),
    ("gpo", {"gpo_fn": "squared", "beta": 0.2}, "ipo", {"beta": 0.1, "ipo_average": False}, 0.04),
    ("aot", {"label_smoothing": 0.1}, "cdpo", {"label_smoothing": 0.1}, 1.0),
    ("aot_unpaired", {}, "sigmoid", {}, 1.0),
])
def test_limits_and_equivalences(name, kw, other, other_kw, scale):
    """GPO: logistic at β = DPO at β; hinge at β = (1/δ)·SLiC hinge with margin δ = 1/β
    (equal at β = δ = 1); squared at β = β²·IPO at β/2 on summed log-probs (equal at β = 1 vs
    IPO's 0.5). AOT on a batch of one pair: nothing to sort, it is (c)DPO. Values and gradients."""
    raw, mask, ref = random_pairs(seed=41, B=1 if name.startswith("aot") else 9)
    ours, grad = _values_and_grads(name, raw, mask, ref, **kw)
    theirs, grad_other = _values_and_grads(other, raw, mask, ref, **other_kw)
    torch.testing.assert_close(ours, scale * theirs, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, scale * grad_other, atol=1e-12, rtol=1e-10)
    assert ours.abs().sum() > 0


def test_discopop_with_a_small_tau_is_dpo_below_zero_and_exponential_above():
    """τ → 0 makes the blend a step at βu = 0: the logistic loss (DPO) for βu < 0 and the
    exponential loss (GPO's ``exponential``) for βu > 0 (here |βu| ≥ 0.5 and τ = 0.001, so the
    other part's weight is below e^−500)."""
    u = torch.tensor([-30.0, -5.0, 5.0, 12.0], dtype=torch.float64)
    pol = Logps(torch.stack([u, torch.zeros(4, dtype=torch.float64)]).unsqueeze(-1), torch.ones(2, 4, 1, dtype=torch.bool))
    ref = Logps(torch.zeros(2, 4, 1, dtype=torch.float64), torch.ones(2, 4, 1, dtype=torch.bool))
    out = run("discopop", pol, ref, discopop_tau=1e-3).losses
    torch.testing.assert_close(out[:2], run("sigmoid", pol, ref).losses[:2], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[2:], run("gpo", pol, ref, gpo_fn="exponential").losses[2:], atol=1e-12, rtol=0)


def test_aot_on_a_batch_already_in_order_is_dpo():
    """When the policy margins and the reference margins have the same order, sorting pairs each
    pair with itself, and AOT's losses are DPO's in that order."""
    pol = logps([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [0.0]]])
    ref = logps([[[-1.0], [0.5], [2.0]], [[0.0], [0.0], [0.0]]])
    torch.testing.assert_close(run("aot", pol, ref).losses, run("sigmoid", pol, ref).losses)


# ----------------------------------------------------------------------------- TRL's formulas

def trl_formula(name: str, pc, pr, rc, rr, beta: float, ls: float, tau: float, eps: float) -> torch.Tensor:
    """TRL DPOTrainer's per-sequence loss for loss_type ``name``, in its notation: chosen/rejected
    summed log-probs of the policy (pc, pr) and the reference (rc, rr). Its ``label_smoothing``
    is ``ls`` (and the ε of exo_pair, passed here as ``eps``), ``discopop_tau`` is ``tau``."""
    F = torch.nn.functional
    cl, rl = pc - rc, pr - rr  # TRL's chosen_logratios / rejected_logratios
    delta = cl - rl
    if name == "exo_pair":
        z = beta * delta
        return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps))
    if name == "nca_pair":
        return -F.logsigmoid(beta * cl) - 0.5 * F.logsigmoid(-beta * cl) - 0.5 * F.logsigmoid(-beta * rl)
    if name == "bco_pair":  # TRL 1.x: no running shift
        return -F.logsigmoid(beta * cl) - F.logsigmoid(-beta * rl)
    if name == "sppo_hard":
        return (cl - 0.5 / beta) ** 2 + (rl + 0.5 / beta) ** 2
    if name in ("aot", "aot_unpaired"):
        d = (torch.sort(pc - pr).values - torch.sort(rc - rr).values if name == "aot"
             else torch.sort(cl).values - torch.sort(rl).values)
        return -(1 - ls) * F.logsigmoid(beta * d) - ls * F.logsigmoid(-beta * d)
    if name == "apo_zero":
        return 1 - torch.sigmoid(beta * cl) + torch.sigmoid(beta * rl)
    if name == "apo_down":
        return torch.sigmoid(beta * cl) + 1 - torch.sigmoid(beta * delta)
    if name == "discopop":
        mod = torch.sigmoid(beta * delta / tau)
        return (1 - mod) * -F.logsigmoid(beta * delta) + mod * torch.exp(-beta * delta)
    if name == "hinge":  # TRL's hinge is 1 − β·u clipped at 0: GPO's hinge, not SLiC's margin form
        return torch.relu(1 - beta * delta)
    if name == "sigmoid":
        return -F.logsigmoid(beta * delta)
    raise KeyError(name)


TRL = [("exo_pair", "exo_pair", {}), ("nca_pair", "nca_pair", {}), ("bco_pair", "bco_pair", {}),
       ("sppo_hard", "sppo_hard", {}), ("aot", "aot", {}), ("aot_unpaired", "aot_unpaired", {}),
       ("apo_zero", "apo_zero", {}), ("apo_down", "apo_down", {}), ("discopop", "discopop", {}),
       ("hinge", "gpo", {"gpo_fn": "hinge"}), ("sigmoid", "gpo", {"gpo_fn": "logistic"})]


@pytest.mark.parametrize("trl_name,name,kw", TRL, ids=[t[0] for t in TRL])
def test_same_value_as_trls_formula(trl_name, name, kw):
    """Same inputs, same per-sequence values (β = 0.3, label smoothing 0.2, τ = 0.5, ε = 0.01).
    TRL 1.x's bco_pair has no reward shift: the inputs are centred so that this first batch's
    mean reward, hence dpokit's δ, is 0."""
    raw, mask, ref = random_pairs(seed=7, B=8)
    policy = Logps(raw.detach().masked_fill(~mask, 0.0), mask)
    if name == "bco_pair":
        shift = (policy.sum - ref.sum).mean()
        policy = Logps(policy.tokens - shift * mask / mask.sum(-1, keepdim=True), mask)
    c = cfg(name=name, beta=0.3, label_smoothing=0.2, discopop_tau=0.5, exo_epsilon=0.01, **kw)
    ours = get_loss(name).fn(policy, ref, c, LossContext()).losses
    theirs = trl_formula(trl_name, policy.sum[0], policy.sum[1], ref.sum[0], ref.sum[1], 0.3, 0.2, 0.5, 0.01)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)
