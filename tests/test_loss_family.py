"""Every registered loss against hand-derived numbers, an independent naive implementation
(values and gradients on random inputs), and the limiting cases where losses must coincide.

The naive implementations here are written from the papers' equations, one example at a
time with Python floats (values) or as a separate float64 torch graph (gradients); they
share no code with dpokit.losses.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.config import LossConfig, load_config
from dpokit.errors import UserError
from dpokit.losses import LossContext, Logps, all_losses, get_loss


def logps(sums_or_tokens, requires_grad: bool = False) -> Logps:
    """Logps from nested lists: [group][example] = list of token log-probs (ragged)."""
    G, B = len(sums_or_tokens), len(sums_or_tokens[0])
    T = max(len(seq) for g in sums_or_tokens for seq in g)
    tokens = torch.zeros(G, B, T, dtype=torch.float64)
    mask = torch.zeros(G, B, T, dtype=torch.bool)
    for g, group in enumerate(sums_or_tokens):
        for b, seq in enumerate(group):
            tokens[g, b, :len(seq)] = torch.tensor(seq, dtype=torch.float64)
            mask[g, b, :len(seq)] = True
    return Logps(tokens.requires_grad_(requires_grad), mask)


def one(*values) -> list[list[list[float]]]:
    """A batch of one example whose responses have the given single-token log-probs."""
    return [[[v]] for v in values]


def cfg(**kw) -> LossConfig:
    c = LossConfig(**kw)
    c.resolve_defaults(get_loss(kw.get("name", "sigmoid")).defaults)
    return c


def run(name: str, policy: Logps, reference: Logps | None = None, labels=None, state=None, training=True, **kw):
    return get_loss(name).fn(policy, reference, cfg(name=name, **kw), LossContext(labels, {} if state is None
                                                                               else state, training))


def sp(z: float) -> float:
    """softplus(−z) = −log σ(z), written out."""
    return math.log(1 + math.exp(-z))


# ----------------------------------------------------------------------------- hand-derived values

HAND = [
    # name, policy tokens, reference tokens, hyperparameters, expected loss — each derived in the loss's docstring
    ("sigmoid", one(-1.0, -2.0), one(-1.5, -1.5), {}, 0.644397),
    ("cdpo", one(-1.0, -2.0), one(-1.5, -1.5), {}, 0.654397),  # ε = 0.1 by default
    ("robust", one(-1.0, -2.0), one(-1.5, -1.5), {}, 0.631897),
    ("dpop", one(-2.0, -3.0), one(-1.5, -3.0), {}, 2.625183),
    ("rdpo", [[[-1.0, 0.0, 0.0]], [[-2.0, 0.0, 0.0, 0.0, 0.0]]], one(-1.5, -1.5), {}, math.log(2)),
    ("nll", [[[-1.0, -2.0]], [[-5.0]]], None, {}, 1.5),
    ("ipo", [[[-1.0, -2.0]], [[-3.0]]], [[[-2.0, -2.0]], [[-1.0]]], {}, 6.25),
    ("ipo", one(-1.0, -2.0), one(-1.5, -1.5), {"ipo_average": False}, 16.0),
    ("hinge", one(-1.0, -1.25), one(-1.0, -1.0), {}, 0.75),
    ("hinge", one(-1.0, -3.0), one(-1.0, -1.0), {}, 0.0),
    ("rso", one(0.0, -4.0), one(0.0, 0.0), {}, 0.8),
    ("rso", one(0.0, -4.0), one(0.0, 0.0), {"rso_norm": "sigmoid"}, 0.598139),
    ("simpo", [[[-1.0, -2.0]], [[-3.0]]], None, {}, 0.126928),
    ("cpo", [[[-1.0, -2.0]], [[-4.0]]], None, {}, 2.144397),
    ("orpo", one(math.log(0.5), math.log(0.2)), None, {}, 0.715462),
    ("plackett_luce", one(1.0, 0.0, -1.0), one(0.0, 0.0, 0.0), {"beta": 1.0}, 0.720868),
    ("softmax_dpo", one(1.0, 0.0, -1.0), one(0.0, 0.0, 0.0), {"beta": 1.0}, 0.407606),
    ("lipo", one(0.0, 0.0), one(0.0, 0.0), {"beta": 1.0}, 0.255820),
]


@pytest.mark.parametrize("name,pol,ref,kw,expected", HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_derived_values(name, pol, ref, kw, expected):
    """The worked example in each loss's docstring. rdpo: u = 1 with |y_w| = 3, |y_l| = 5 and
    α = 0.05 → argument 0.1 − 0.1 = 0 → log 2 (the padding tokens of 0.0 count as tokens)."""
    out = run(name, logps(pol), logps(ref) if ref else None, **kw)
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)


def test_beta_dpo_hand_values_and_state():
    """β = 0.1, α = 0.5, first batch u = (1, 3): M0 = mean = 2 → β_batch = 0.1 →
    L = (log(1 + e^−0.1), log(1 + e^−0.3)) = (0.644397, 0.554355); std = √2 stored.
    Second batch u = (5, 5): M0 = 0.9·2 + 0.1·5 = 2.3, β_batch = 0.1·(1 + 0.5·(5 − 2.3)) = 0.235,
    L = log(1 + e^−1.175) = 0.268901 for both; std = 0.9·√2 + 0.1·0."""
    state: dict = {}
    out = run("beta_dpo", logps([[[1.0], [3.0]], [[0.0], [0.0]]]),
              logps([[[0.0], [0.0]], [[0.0], [0.0]]]), state=state)
    torch.testing.assert_close(out.losses, torch.tensor([0.644397, 0.554355], dtype=torch.float64), atol=1e-6, rtol=0)
    assert state["beta_dpo/gap_mean"] == pytest.approx(2.0)
    assert state["beta_dpo/gap_std"] == pytest.approx(math.sqrt(2))
    out = run("beta_dpo", logps([[[5.0], [5.0]], [[0.0], [0.0]]]), logps([[[0.0], [0.0]], [[0.0], [0.0]]]),
              state=state)
    assert out.metrics["beta_dpo/beta"][0].item() == pytest.approx(0.235)
    assert out.losses[0].item() == pytest.approx(sp(1.175), abs=1e-6)
    assert state["beta_dpo/gap_mean"] == pytest.approx(2.3)
    assert state["beta_dpo/gap_std"] == pytest.approx(0.9 * math.sqrt(2))
    # evaluation reads the statistics but leaves them alone
    run("beta_dpo", logps([[[9.0]], [[0.0]]]), logps([[[0.0]], [[0.0]]]), state=state, training=False)
    assert state["beta_dpo/gap_mean"] == pytest.approx(2.3)


def test_beta_dpo_filter_keeps_a_fraction_and_rescales():
    """ρ = 0.25 of 8 pairs dropped → 6 kept; the kept losses are scaled by 8/6 so their sum
    over the batch divided by 8 is the mean over kept pairs; dropped pairs get no loss."""
    torch.manual_seed(0)
    u = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 20.0], dtype=torch.float64)
    pol = Logps(torch.stack([u, torch.zeros(8, dtype=torch.float64)]).unsqueeze(-1), torch.ones(2, 8, 1, dtype=torch.bool))
    ref = Logps(torch.zeros(2, 8, 1, dtype=torch.float64), torch.ones(2, 8, 1, dtype=torch.bool))
    out = run("beta_dpo", pol, ref, beta_dpo_filter=0.25, beta_dpo_alpha=0.0)
    kept = out.metrics["beta_dpo/kept"].bool()
    assert int(kept.sum()) == 6
    expected = torch.tensor([sp(0.1 * x) for x in u.tolist()], dtype=torch.float64) * 8 / 6
    torch.testing.assert_close(out.losses[kept], expected[kept], atol=1e-9, rtol=0)
    assert (out.losses[~kept] == 0).all()


def test_kto_hand_values():
    """β = 0.1. Mismatched log ratios (1, 3) → z0 = 2. Example 0 desirable, r = 4:
    1 − σ(0.2) = 0.450166; example 1 undesirable, r = 4: 1 − σ(−0.2) = 0.549834.
    With λ_U = 2 the undesirable loss doubles. Accuracy: r > z0 for desirable (1), r < z0
    for undesirable (0). Rewards split by label, NaN for the other."""
    pol = logps([[[4.0], [4.0]], [[1.0], [3.0]]])
    ref = logps([[[0.0], [0.0]], [[0.0], [0.0]]])
    labels = torch.tensor([[1.0], [0.0]])
    out = run("kto", pol, ref, labels=labels)
    torch.testing.assert_close(out.losses, torch.tensor([0.450166, 0.549834], dtype=torch.float64), atol=1e-6, rtol=0)
    assert out.metrics["kto/z0"].tolist() == [2.0, 2.0]
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(0.4) and out.metrics["rewards/chosen"][1].isnan()
    assert out.metrics["rewards/rejected"][1].item() == pytest.approx(0.4) and out.metrics["rewards/rejected"][0].isnan()
    heavy = run("kto", pol, ref, labels=labels, kto_undesirable_weight=2.0)
    assert heavy.losses[1].item() == pytest.approx(2 * 0.549834, abs=1e-6)


def test_kto_reference_point_is_clamped_and_detached():
    """Mismatched ratios (−3, −1) → mean −2 → z0 = max(0, −2) = 0: the loss of a desirable
    answer with r = 0 is 1 − σ(0) = 0.5, and no gradient reaches the mismatched rows."""
    pol = logps([[[0.0], [0.0]], [[-3.0], [-1.0]]], requires_grad=True)
    ref = logps([[[0.0], [0.0]], [[0.0], [0.0]]])
    out = run("kto", pol, ref, labels=torch.tensor([[1.0], [1.0]]))
    assert out.metrics["kto/z0"][0].item() == 0.0
    assert out.losses.tolist() == pytest.approx([0.5, 0.5])
    out.losses.sum().backward()
    assert (pol.tokens.grad[1] == 0).all() and (pol.tokens.grad[0] != 0).all()


def test_tdpo_hand_values_and_variants():
    """β = 0.1, α = 0.5, u = 1, D_SeqKL(y_w) = 0.4 (two tokens 0.1 + 0.3), D_SeqKL(y_l) = 1.2.
    TDPO2: argument 0.1·(1 − 0.5·0.8) = 0.06 → 0.663597. TDPO1: 0.1·(1 − 0.8) = 0.02 → 0.683197.
    TDPO2 detaches the chosen KL: its gradient is 0 there; TDPO1's is not."""
    pol = logps([[[-1.0, 0.0]], [[-2.0, 0.0]]])
    ref = logps([[[-1.5, 0.0]], [[-1.5, 0.0]]])
    for variant, expected in ((2, sp(0.06)), (1, sp(0.02))):
        kl = torch.tensor([[[0.1, 0.3]], [[0.5, 0.7]]], dtype=torch.float64, requires_grad=True)
        pol.kl = kl
        out = run("tdpo", pol, ref, tdpo_variant=variant)
        assert out.losses.item() == pytest.approx(expected, abs=1e-6)
        out.losses.sum().backward()
        assert (kl.grad[0] == 0).all() == (variant == 2)
        assert (kl.grad[1] != 0).all()
    assert sp(0.06) == pytest.approx(0.663597, abs=1e-6)


# ----------------------------------------------------------------------------- naive implementations

def naive_value(name: str, pw, pl, rw, rl, nw, nl, c: LossConfig) -> float:
    """One pair from the papers' equations with floats. pw/pl: policy sums, rw/rl: reference
    sums, nw/nl: token counts."""
    b = c.beta
    u = (pw - rw) - (pl - rl)
    if name in ("sigmoid", "cdpo"):
        e = c.label_smoothing
        return (1 - e) * sp(b * u) + e * sp(-b * u)
    if name == "robust":
        e = c.label_smoothing
        return ((1 - e) * sp(b * u) - e * sp(-b * u)) / (1 - 2 * e)
    if name == "dpop":
        return sp(b * (u - c.dpop_lambda * max(0.0, rw - pw)))
    if name == "rdpo":
        return sp(b * u + c.rdpo_alpha * (nw - nl))
    if name == "nll":
        return -pw / nw
    if name == "ipo":
        ua = (pw / nw - rw / nw) - (pl / nl - rl / nl) if c.ipo_average else u
        return (ua - 1 / (2 * b)) ** 2
    if name == "hinge":
        return max(0.0, c.hinge_margin - u)
    if name == "rso":
        return max(0.0, 1 - c.rso_gamma * u) if c.rso_norm == "hinge" else sp(c.rso_gamma * u)
    if name == "simpo":
        return sp(b * pw / nw - b * pl / nl - c.simpo_gamma)
    if name == "cpo":
        return sp(b * pw - b * pl) + c.cpo_alpha * (-pw / nw)
    if name == "orpo":
        def log_odds(mean):
            p = math.exp(mean)
            return math.log(p / (1 - p))
        return -pw / nw + c.orpo_lambda * sp(log_odds(pw / nw) - log_odds(pl / nl))
    raise KeyError(name)


PAIR_LOSSES = ["sigmoid", "cdpo", "robust", "dpop", "rdpo", "nll", "ipo", "hinge", "rso", "simpo", "cpo", "orpo"]
SETTINGS = [{}, {"beta": 0.5, "label_smoothing": 0.3, "dpop_lambda": 5.0, "rdpo_alpha": -0.2, "ipo_average": False,
                 "hinge_margin": 3.0, "rso_norm": "sigmoid", "rso_gamma": 0.5, "simpo_gamma": 0.3,
                 "cpo_alpha": 0.5, "orpo_lambda": 1.0}]


def random_pairs(seed: int, G: int = 2, B: int = 7, T: int = 6, requires_grad: bool = True):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (G, B), generator=gen)
    mask = torch.arange(T).expand(G, B, T) < lengths.unsqueeze(-1)
    raw = -torch.rand(G, B, T, generator=gen, dtype=torch.float64) * 1.5 - 0.05
    ref = (-torch.rand(G, B, T, generator=gen, dtype=torch.float64) * 1.5 - 0.05).masked_fill(~mask, 0.0)
    return raw.requires_grad_(requires_grad), mask, Logps(ref, mask)


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_match_naive_values(name, setting):
    raw, mask, ref = random_pairs(seed=hash(name) % 1000 + setting)
    policy = Logps(raw.masked_fill(~mask, 0.0), mask)
    c = cfg(name=name, **SETTINGS[setting])
    out = get_loss(name).fn(policy, ref, c, LossContext())
    s, r, n = policy.sum.detach(), ref.sum, mask.sum(-1).double()
    expected = [naive_value(name, s[0, i].item(), s[1, i].item(), r[0, i].item(), r[1, i].item(),
                            n[0, i].item(), n[1, i].item(), c) for i in range(s.shape[1])]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)


def naive_graph(name: str, tokens: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, c: LossConfig) -> torch.Tensor:
    """The same equations as a separate float64 torch graph over (G, B, T) token log-probs."""
    m = mask.double()
    s, n, rs = (tokens * m).sum(-1), m.sum(-1), (ref * m).sum(-1)
    b = c.beta
    f = torch.nn.functional.softplus
    u = (s[0] - rs[0]) - (s[1] - rs[1])
    table = {
        "sigmoid": lambda: (1 - c.label_smoothing) * f(-b * u) + c.label_smoothing * f(b * u),
        "robust": lambda: ((1 - c.label_smoothing) * f(-b * u) - c.label_smoothing * f(b * u)) / (1 - 2 * c.label_smoothing),
        "dpop": lambda: f(-b * (u - c.dpop_lambda * torch.relu(rs[0] - s[0]))),
        "rdpo": lambda: f(-(b * u + c.rdpo_alpha * (n[0] - n[1]))),
        "nll": lambda: -s[0] / n[0],
        "ipo": lambda: ((((s[0] - rs[0]) / n[0] - (s[1] - rs[1]) / n[1]) if c.ipo_average else u) - 1 / (2 * b)) ** 2,
        "hinge": lambda: torch.relu(c.hinge_margin - u),
        "rso": lambda: torch.relu(1 - c.rso_gamma * u) if c.rso_norm == "hinge" else f(-c.rso_gamma * u),
        "simpo": lambda: f(-(b * s[0] / n[0] - b * s[1] / n[1] - c.simpo_gamma)),
        "cpo": lambda: f(-(b * s[0] - b * s[1])) - c.cpo_alpha * s[0] / n[0],
        "orpo": lambda: -s[0] / n[0] + c.orpo_lambda * f(-((s[0] / n[0] - torch.log(1 - torch.exp(s[0] / n[0])))
                                                           - (s[1] / n[1] - torch.log(1 - torch.exp(s[1] / n[1]))))),
    }
    table["cdpo"] = table["sigmoid"]
    return table[name]()


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_match_naive_gradients(name, setting):
    """d(Σ losses)/d(token log-probs) equals the naive graph's, and is 0 at masked positions."""
    raw, mask, ref = random_pairs(seed=hash(name) % 1000 + 17 + setting)
    c = cfg(name=name, **SETTINGS[setting])
    out = get_loss(name).fn(Logps(raw.masked_fill(~mask, 0.0), mask), ref, c, LossContext())
    (grad,) = torch.autograd.grad(out.losses.sum(), raw)
    raw2 = raw.detach().clone().requires_grad_(True)
    (grad_naive,) = torch.autograd.grad(naive_graph(name, raw2, mask, ref.tokens, c).sum(), raw2)
    torch.testing.assert_close(grad, grad_naive, atol=1e-9, rtol=1e-7)
    assert (grad[~mask] == 0).all()


def naive_list_value(name: str, s: list[float], psi: list[float] | None = None) -> float:
    """One list of rewards s (best first) from the papers' equations."""
    k = len(s)
    if name == "plackett_luce":
        return -sum(s[i] - math.log(sum(math.exp(x) for x in s[i:])) for i in range(k - 1))
    if name == "softmax_dpo":
        return sp(-math.log(sum(math.exp(x - s[0]) for x in s[1:])))
    if name == "lipo":
        psi = psi if psi is not None else [k - 1 - i for i in range(k)]
        order = sorted(range(k), key=lambda i: -s[i])  # stable: ties keep list order
        tau = {i: pos + 1 for pos, i in enumerate(order)}
        total = 0.0
        for i in range(k):
            for j in range(k):
                if psi[i] > psi[j]:
                    gain = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1))
                    disc = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                    total += gain * disc * sp(s[i] - s[j])
        return total
    raise KeyError(name)


@pytest.mark.parametrize("name", ["plackett_luce", "softmax_dpo", "lipo"])
@pytest.mark.parametrize("k", [2, 4, 5])
def test_listwise_match_naive_values_and_gradients(name, k):
    raw, mask, ref = random_pairs(seed=k * 31 + len(name), G=k, B=5)
    policy = Logps(raw.masked_fill(~mask, 0.0), mask)
    c = cfg(name=name, beta=0.7)
    out = get_loss(name).fn(policy, ref, c, LossContext())
    s = c.beta * (policy.sum.detach() - ref.sum)
    expected = [naive_list_value(name, s[:, i].tolist()) for i in range(s.shape[1])]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    # gradients: finite differences of the naive value in the reward of each answer
    (grad,) = torch.autograd.grad(out.losses.sum(), raw)
    ds = grad[:, :, 0] / c.beta  # d loss / d s_i = grad of its first token / β
    for i in range(s.shape[1]):
        for g in range(k):
            if name == "lipo":
                continue  # the rank-based weights are piecewise constant; checked with values below
            h = 1e-6
            up, down = s[:, i].tolist(), s[:, i].tolist()
            up[g] += h
            down[g] -= h
            fd = (naive_list_value(name, up) - naive_list_value(name, down)) / (2 * h)
            assert ds[g, i].item() == pytest.approx(fd, abs=1e-6)


def test_lipo_uses_scores_as_graded_relevance():
    """Scores (9, 7, 1) are scaled to ψ = (2, 1.5, 0) on [0, k−1]; the loss equals the naive
    one with those ψ; equal scores give no pair (Δ = 0 and no 'better' relation)."""
    pol = logps(one(0.2, -0.1, 0.4))
    ref = logps(one(0.0, 0.0, 0.0))
    out = run("lipo", pol, ref, labels=torch.tensor([[9.0, 7.0, 1.0]]), beta=1.0)
    assert out.losses.item() == pytest.approx(naive_list_value("lipo", [0.2, -0.1, 0.4], [2.0, 1.5, 0.0]), abs=1e-9)
    tie = run("lipo", pol, ref, labels=torch.tensor([[5.0, 5.0, 5.0]]), beta=1.0)
    assert tie.losses.item() == 0.0


def test_kto_matches_naive_on_random_inputs():
    raw, mask, ref = random_pairs(seed=5, B=9)
    labels = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0], [1.0], [0.0], [1.0]])
    c = cfg(name="kto", beta=0.3, kto_desirable_weight=1.5, kto_undesirable_weight=0.7)
    out = get_loss("kto").fn(Logps(raw.masked_fill(~mask, 0.0), mask), ref, c, LossContext(labels))
    s = raw.detach().masked_fill(~mask, 0.0).sum(-1) - ref.sum
    z0 = max(0.0, sum(s[1].tolist()) / s.shape[1])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1.5 * (1 - sig(0.3 * (s[0, i].item() - z0))) if labels[i, 0] else
                0.7 * (1 - sig(0.3 * (z0 - s[0, i].item()))) for i in range(s.shape[1])]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------- limiting cases

@pytest.mark.parametrize("name,kw", [("cdpo", {"label_smoothing": 0.0}), ("robust", {"label_smoothing": 0.0}),
                                     ("dpop", {"dpop_lambda": 0.0}), ("rdpo", {"rdpo_alpha": 0.0}),
                                     ("beta_dpo", {"beta_dpo_alpha": 0.0}), ("plackett_luce", {}),
                                     ("softmax_dpo", {}), ("rso", {"rso_norm": "sigmoid", "rso_gamma": 0.1}),
                                     ("tdpo", {"tdpo_alpha": 0.0})])
def test_limits_coincide_with_dpo(name, kw):
    """cdpo/robust with ε = 0, dpop with λ = 0, rdpo with α = 0, beta_dpo with its scaling off,
    Plackett–Luce and S-DPO with k = 2, RSO sigmoid-norm with γ = β, and TDPO2 with α = 0
    (any KL values) ≡ DPO, in values and gradients."""
    raw, mask, ref = random_pairs(seed=99)
    outs = []
    for loss, extra in ((name, kw), ("sigmoid", {})):
        raw_i = raw.detach().clone().requires_grad_(True)
        policy = Logps(raw_i.masked_fill(~mask, 0.0), mask, kl=torch.rand(raw.shape, dtype=torch.float64))
        out = get_loss(loss).fn(policy, ref, cfg(name=loss, **extra), LossContext())
        (grad,) = torch.autograd.grad(out.losses.sum(), raw_i)
        outs.append((out.losses.detach(), grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-12, rtol=1e-10)


def test_combined_loss_is_the_weighted_sum():
    """``sigmoid:1.0,nll:0.2`` = DPO + 0.2·NLL(y_w)/|y_w| per example, and it logs each part."""
    raw, mask, ref = random_pairs(seed=3)
    pol = Logps(raw.masked_fill(~mask, 0.0), mask)
    spec = get_loss("sigmoid:1.0,nll:0.2")
    assert spec.needs_reference and spec.has_nll and spec.kinds == ("pair",) and spec.unit == "example"
    c = cfg(name="sigmoid")
    out = spec.fn(pol, ref, c, LossContext())
    dpo = get_loss("sigmoid").fn(pol, ref, c, LossContext()).losses
    nll = get_loss("nll").fn(pol, ref, c, LossContext()).losses
    torch.testing.assert_close(out.losses, dpo + 0.2 * nll)
    torch.testing.assert_close(out.metrics["loss/nll"], nll.detach())
    assert "rewards/accuracies" in out.metrics


@pytest.mark.parametrize("text,message", [
    ("sigmoid:x", "must be a number"), ("sigmoid:-1", "positive"), ("sigmoid,kto", "different record kinds"),
    ("sigmoid,sft", "different record kinds"), ("sigmoid,sigmoid", "twice"), ("sigmoid,nope", "unknown loss")])
def test_bad_combinations_are_config_errors(text, message):
    with pytest.raises(UserError, match=message) as exc:
        load_config(None, {"model.path": "m", "data.train": "d", "loss.name": text})
    assert exc.value.field == "loss.name"


def test_registry_declares_every_loss_of_the_family():
    names = set(all_losses())
    assert {"sigmoid", "cdpo", "robust", "ipo", "hinge", "rso", "dpop", "beta_dpo", "rdpo", "tdpo", "nll", "simpo",
            "cpo", "orpo", "kto", "plackett_luce", "lipo", "softmax_dpo", "sft", "gpo", "exo_pair", "nca_pair",
            "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "aot", "aot_unpaired"} <= names
    for spec in all_losses().values():
        assert spec.fn.__doc__ and "Worked example" in spec.fn.__doc__ or spec.name == "sft", spec.name
    assert not get_loss("simpo").needs_reference and get_loss("kto").input_kind == "unpaired"
    assert get_loss("lipo").input_kind == "list" and get_loss("tdpo").token_kl


def test_loss_defaults_resolve_per_loss():
    base = {"model.path": "m", "data.train": "d"}
    assert load_config(None, {**base, "loss.name": "simpo"}).loss.beta == 2.0
    assert load_config(None, {**base, "loss.name": "sigmoid"}).loss.beta == 0.1
    assert load_config(None, {**base, "loss.name": "cdpo"}).loss.label_smoothing == 0.1
    assert load_config(None, {**base, "loss.name": "sigmoid"}).loss.label_smoothing == 0.0
    assert load_config(None, {**base, "loss.name": "simpo", "loss.beta": 2.5}).loss.beta == 2.5
    with pytest.raises(UserError, match="full per-token distributions"):
        load_config(None, {**base, "loss.name": "tdpo", "train.ref": "precomputed"})
    assert load_config(None, {**base, "loss.name": "tdpo", "train.ref": "copy"}).loss.tdpo_variant == 2
