"""f-DPO (ratios.py), WPO weighting (an option of sigmoid) and LD-DPO (ratios.py): the worked
values of their docstrings, a naive implementation from the papers (Python floats for values,
a separate float64 torch graph for gradients), the limits where they are DPO, and TRL's
formulas where TRL has the option, re-derived from reading its ``DPOTrainer`` (the
``f_divergence_type`` branches of its loss, ``use_weighting``, ``ld_alpha``) and written here
in batch form over summed log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.losses import LossContext, Logps, get_loss
from test_loss_family import cfg, logps, one, random_pairs, sp


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(name, pol, ref, **kw):
    return get_loss(name).fn(pol, ref, cfg(name=name, **kw), LossContext())


def values_and_grads(name, raw, mask, ref, **kw):
    x = raw.detach().clone().requires_grad_(True)
    out = get_loss(name).fn(Logps(x.masked_fill(~mask, 0.0), mask), ref, cfg(name=name, **kw), LossContext())
    return out.losses.detach(), torch.autograd.grad(out.losses.sum(), x)[0]


# ----------------------------------------------------------------------------- f-DPO

DIVERGENCES = ["reverse_kl", "forward_kl", "js", "alpha"]


@pytest.mark.parametrize("div,kw,expected", [("reverse_kl", {}, 0.598139), ("forward_kl", {}, 0.582517),
                                             ("js", {}, 0.644397), ("alpha", {"fdpo_alpha": 0.5}, 0.594349)])
def test_fdpo_docstring_values(div, kw, expected):
    out = run("fdpo", logps(one(1.0, -1.0)), logps(one(0.0, 0.0)), fdpo_divergence=div, **kw)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1)


def naive_f_prime(div: str, t: float, alpha: float) -> float:
    """f'(t) of each f-divergence, constants included (they cancel in the difference)."""
    if div == "reverse_kl":
        return math.log(t) + 1
    if div == "forward_kl":
        return -1 / t
    if div == "js":
        return math.log(2 * t / (1 + t))
    return (1 - t ** -alpha) / alpha


def naive_graph_f_prime(div: str, t: torch.Tensor, alpha: float) -> torch.Tensor:
    return {"reverse_kl": lambda: torch.log(t) + 1, "forward_kl": lambda: -1 / t,
            "js": lambda: torch.log(2 * t / (1 + t)), "alpha": lambda: (1 - t ** -alpha) / alpha}[div]()


@pytest.mark.parametrize("div", DIVERGENCES)
def test_fdpo_matches_naive_values_and_gradients(div):
    raw, mask, ref = random_pairs(seed=len(div), B=9)
    kw = {"beta": 0.4, "label_smoothing": 0.1, "fdpo_alpha": 0.3}
    ours, grad = values_and_grads("fdpo", raw, mask, ref, fdpo_divergence=div, **kw)
    s, r = (raw * mask).sum(-1).detach().tolist(), ref.sum.tolist()
    expected = []
    for i in range(9):
        t_w, t_l = math.exp(s[0][i] - r[0][i]), math.exp(s[1][i] - r[1][i])  # π/π_ref of each answer
        z = 0.4 * (naive_f_prime(div, t_w, 0.3) - naive_f_prime(div, t_l, 0.3))
        expected.append(0.9 * sp(z) + 0.1 * sp(-z))
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    x = raw.detach().clone().requires_grad_(True)
    t = torch.exp((x * mask).sum(-1) - ref.tokens.sum(-1))
    z = 0.4 * (naive_graph_f_prime(div, t[0], 0.3) - naive_graph_f_prime(div, t[1], 0.3))
    naive = -0.9 * torch.log(torch.sigmoid(z)) - 0.1 * torch.log(torch.sigmoid(-z))
    torch.testing.assert_close(grad, torch.autograd.grad(naive.sum(), x)[0], atol=1e-9, rtol=1e-7)
    assert (grad[~mask] == 0).all() and grad[mask].abs().sum() > 0


@pytest.mark.parametrize("kw,other,other_kw", [
    ({"fdpo_divergence": "reverse_kl", "beta": 0.3, "label_smoothing": 0.2}, "sigmoid",
     {"beta": 0.3, "label_smoothing": 0.2}),
    ({"fdpo_divergence": "alpha", "fdpo_alpha": 1.0}, "fdpo", {"fdpo_divergence": "forward_kl"}),
])
def test_fdpo_limits(kw, other, other_kw):
    """Reverse KL is DPO (and cDPO with ε); the α-divergence at α = 1 is the forward KL."""
    raw, mask, ref = random_pairs(seed=5, B=9)
    a, ga = values_and_grads("fdpo", raw, mask, ref, **kw)
    b, gb = values_and_grads(other, raw, mask, ref, **other_kw)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)


def test_fdpo_small_alpha_approaches_reverse_kl():
    """(1 − t^{−α})/α → log t as α → 0: at α = 1e-6 the loss is DPO's to about 1e-6."""
    raw, mask, ref = random_pairs(seed=6, B=9)
    a, _ = values_and_grads("fdpo", raw, mask, ref, fdpo_divergence="alpha", fdpo_alpha=1e-6)
    b, _ = values_and_grads("sigmoid", raw, mask, ref)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def trl_fdpo(div: str, pc, pr, rc, rr, beta: float, ls: float, alpha: float):
    """TRL's logits for each f_divergence_type (its chosen/rejected log ratios cl, rl), then its
    sigmoid loss with label smoothing."""
    F = torch.nn.functional
    cl, rl = pc - rc, pr - rr
    logits = cl - rl
    if div == "alpha":
        logits = (torch.exp(-alpha * rl) - torch.exp(-alpha * cl)) / alpha
    elif div == "js":
        logits = logits - (F.softplus(cl) - F.softplus(rl))
    return -(1 - ls) * F.logsigmoid(beta * logits) - ls * F.logsigmoid(-beta * logits)


@pytest.mark.parametrize("div", ["reverse_kl", "js", "alpha"])
def test_fdpo_same_value_as_trls_formula(div):
    """TRL's three f-divergences (it has no forward KL apart from α = 1) on the same inputs."""
    raw, mask, ref = random_pairs(seed=8, B=8)
    pol = Logps(raw.detach().masked_fill(~mask, 0.0), mask)
    ours = run("fdpo", pol, ref, fdpo_divergence=div, fdpo_alpha=0.7, beta=0.3, label_smoothing=0.2).losses
    theirs = trl_fdpo(div, pol.sum[0], pol.sum[1], ref.sum[0], ref.sum[1], 0.3, 0.2, 0.7)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)


def test_fdpo_forward_kl_stays_finite_on_very_unlikely_answers():
    out = run("fdpo", logps(one(-2000.0, 0.0), requires_grad=True), logps(one(0.0, 0.0)),
              fdpo_divergence="forward_kl")
    assert torch.isfinite(out.losses).all()


# ----------------------------------------------------------------------------- WPO weighting

def test_wpo_docstring_value():
    """β = 0.1, log π = (−1, −2) one token each, log π_ref = (−1.5, −1.5): w = e^−3."""
    out = run("sigmoid", logps(one(-1.0, -2.0)), logps(one(-1.5, -1.5)), wpo=True)
    assert out.losses.item() == pytest.approx(0.032083, abs=1e-6)
    assert out.metrics["wpo/weight"].item() == pytest.approx(0.049787, abs=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "cdpo"])
def test_wpo_matches_naive_values_and_gradients(name):
    """The weight from the policy's per-token log-probs (mean over each answer's tokens), not
    differentiated: the gradient is the weight times DPO's."""
    raw, mask, ref = random_pairs(seed=11, B=9)
    ours, grad = values_and_grads(name, raw, mask, ref, wpo=True, beta=0.5)
    eps = 0.1 if name == "cdpo" else 0.0
    x, m = raw.detach().tolist(), mask.tolist()
    s, r = (raw * mask).sum(-1).detach().tolist(), ref.sum.tolist()
    expected = []
    for i in range(9):
        means = [sum(v for v, k in zip(x[g][i], m[g][i]) if k) / sum(m[g][i]) for g in (0, 1)]
        z = 0.5 * ((s[0][i] - r[0][i]) - (s[1][i] - r[1][i]))
        expected.append(math.exp(means[0]) * math.exp(means[1]) * ((1 - eps) * sp(z) + eps * sp(-z)))
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    y = raw.detach().clone().requires_grad_(True)
    mm = mask.double()
    sums = (y * mm).sum(-1)
    w = torch.exp((sums / mm.sum(-1)).sum(0)).detach()
    z = 0.5 * ((sums[0] - ref.tokens[0].sum(-1)) - (sums[1] - ref.tokens[1].sum(-1)))
    naive = w * (-(1 - eps) * torch.log(torch.sigmoid(z)) - eps * torch.log(torch.sigmoid(-z)))
    torch.testing.assert_close(grad, torch.autograd.grad(naive.sum(), y)[0], atol=1e-9, rtol=1e-7)


def test_wpo_off_and_certain_answers_are_dpo():
    """Without ``wpo`` nothing changes; with it, answers the policy is certain of (log-prob 0 at
    every token) weigh 1, so the loss is DPO's; any other pair weighs less than 1."""
    raw, mask, ref = random_pairs(seed=12, B=9)
    dpo, gd = values_and_grads("sigmoid", raw, mask, ref)
    torch.testing.assert_close(run("sigmoid", Logps(raw.detach().masked_fill(~mask, 0.0), mask), ref).losses, dpo)
    weighted, _ = values_and_grads("sigmoid", raw, mask, ref, wpo=True)
    assert (weighted < dpo).all()
    zero = torch.zeros_like(raw)
    a, ga = values_and_grads("sigmoid", zero, mask, ref, wpo=True)
    b, gb = values_and_grads("sigmoid", zero, mask, ref)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(ga, gb, atol=0, rtol=0)


def _aligned(tokens, align, mask):
    return Logps(tokens.masked_fill(~mask, 0.0), mask, align=align.masked_fill(~mask, 0.0))


@pytest.mark.parametrize("alignment, divisor, expected", [("sampled", 0.68, 0.294118), ("greedy", 0.8, 0.25)])
def test_wpo_alignment_docstring_values(alignment, divisor, expected):
    """One token each: π(y_w) = 0.2 of (0.8, 0.2), π(y_l) = 0.5 of (0.5, 0.5)."""
    mask = torch.ones(2, 1, 1, dtype=torch.bool)
    tokens = torch.tensor([[[math.log(0.2)]], [[math.log(0.5)]]])
    align = torch.tensor([[[math.log(divisor)]], [[math.log(0.5)]]])
    out = run("sigmoid", _aligned(tokens, align, mask), logps(one(-1.5, -1.5)), wpo=True, wpo_alignment=alignment)
    assert out.metrics["wpo/weight"].item() == pytest.approx(expected, abs=1e-6)
    dpo = run("sigmoid", Logps(tokens, mask), logps(one(-1.5, -1.5))).losses
    assert out.losses.item() == pytest.approx(expected * dpo.item(), rel=1e-5)


def _trl_weights(log_probs, labels, mask, group):
    """TRL's ``use_weighting`` as its DPOTrainer writes it, re-derived: per-token log-probs minus
    logsumexp(2·log-probs), averaged over each answer, chosen + rejected, exp, clamped at 1."""
    picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    adjusted = picked - torch.logsumexp(2 * log_probs, dim=-1)
    per_answer = (adjusted * mask).sum(-1) / mask.sum(-1)
    n = per_answer.shape[0] // group
    return torch.clamp(torch.exp(per_answer[:n] + per_answer[n:]), max=1)


@pytest.mark.parametrize("chunk", [0, 3])
def test_wpo_sampled_alignment_through_the_model_matches_trl(tmp_path, chunk):
    """On the tiny model, the log-prob path's alignment terms (in one pass, chunked or not) give
    TRL's weights computed from the full distributions, and leave the log-probs and their
    gradients as the plain path has them."""
    from dpokit.data import collate
    from dpokit.losses.dpo import wpo_weights
    from dpokit.policies.lm.logprobs import Options, completion_log_probs, completion_logps
    from dpokit.policies.lm.tiny import tiny_tokenizer, write_tiny_model
    from transformers import AutoModelForCausalLM
    from helpers import write_pairs

    from dpokit.config import DataConfig
    from dpokit.data import read_records, tokenize_records

    model = AutoModelForCausalLM.from_pretrained(write_tiny_model(tmp_path / "m"))
    tok = tiny_tokenizer()
    records = read_records(write_pairs(tmp_path / "p.jsonl", n=4), "pair", DataConfig())
    batch = collate(tokenize_records(records, tok, 64, 32)[0], tok.pad_token_id)
    aligned = completion_logps(model, batch, 2, options=Options(chunk=chunk, alignment="sampled"))
    plain = completion_logps(model, batch, 2, options=Options(chunk=chunk))
    torch.testing.assert_close(aligned.tokens, plain.tokens)  # to rounding: log_softmax vs gather − logsumexp
    with torch.no_grad():
        full = completion_log_probs(model, batch, 2)
    first = batch["input_ids"].shape[1] - full.shape[1]
    labels, mask = batch["input_ids"][:, first:], batch["completion_mask"][:, first:]
    theirs = _trl_weights(full, labels, mask.float(), 2)
    torch.testing.assert_close(wpo_weights(aligned, "sampled"), theirs, atol=1e-5, rtol=1e-5)
    assert (theirs > wpo_weights(plain)).all()  # the plain weight is far smaller on a random model
    g1 = torch.autograd.grad(aligned.sum.sum(), [p for p in model.parameters()][-1])[0]
    g2 = torch.autograd.grad(completion_logps(model, batch, 2, options=Options(chunk=chunk)).sum.sum(),
                             [p for p in model.parameters()][-1])[0]
    torch.testing.assert_close(g1, g2)


# ----------------------------------------------------------------------------- LD-DPO

def test_ld_dpo_docstring_value():
    out = run("ld_dpo", logps([[[-1.0, -2.0, -3.0]], [[-1.0]]]), logps([[[0.0, 0.0, 0.0]], [[0.0]]]))
    assert out.losses.item() == pytest.approx(0.825939, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.35)


def naive_ld(tokens: list[float], shared: int, alpha: float) -> float:
    return sum(tokens[:shared]) + alpha * sum(tokens[shared:])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8])
def test_ld_dpo_matches_naive_values_and_gradients(alpha):
    raw, mask, ref = random_pairs(seed=int(alpha * 10) + 20, B=9)
    ours, grad = values_and_grads("ld_dpo", raw, mask, ref, ld_alpha=alpha, beta=0.4, label_smoothing=0.1)
    x, rt, n = raw.detach().tolist(), ref.tokens.tolist(), mask.sum(-1).tolist()
    expected = []
    for i in range(9):
        shared = min(n[0][i], n[1][i])
        u = [naive_ld(x[g][i][:n[g][i]], shared, alpha) - naive_ld(rt[g][i][:n[g][i]], shared, alpha) for g in (0, 1)]
        z = 0.4 * (u[0] - u[1])
        expected.append(0.9 * sp(z) + 0.1 * sp(-z))
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    # gradients: a separate graph that scales each token by 1 inside the shared length, α past it
    y = raw.detach().clone().requires_grad_(True)
    sh = mask.sum(-1).min(0).values
    pos = torch.arange(raw.shape[-1]).expand_as(raw)  # random_pairs puts every answer at the row's start
    scale = torch.where(pos < sh[None, :, None], 1.0, alpha) * mask
    uu = ((y - ref.tokens) * scale).sum(-1)
    zz = 0.4 * (uu[0] - uu[1])
    naive = -0.9 * torch.log(torch.sigmoid(zz)) - 0.1 * torch.log(torch.sigmoid(-zz))
    torch.testing.assert_close(grad, torch.autograd.grad(naive.sum(), y)[0], atol=1e-9, rtol=1e-7)
    if alpha == 0.0:  # tokens past the shorter answer get no gradient at all
        assert (grad[mask & (pos >= sh[None, :, None])] == 0).all()


def test_ld_dpo_alpha_one_is_dpo_and_equal_lengths_are_dpo():
    raw, mask, ref = random_pairs(seed=30, B=9)
    a, ga = values_and_grads("ld_dpo", raw, mask, ref, ld_alpha=1.0, beta=0.3, label_smoothing=0.2)
    b, gb = values_and_grads("sigmoid", raw, mask, ref, beta=0.3, label_smoothing=0.2)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)
    same = torch.ones_like(mask)  # both answers of every pair as long: nothing to damp, any α
    ref_same = Logps(ref.tokens.masked_fill(~same, 0.0) + (~mask) * -0.5, same)
    a, ga = values_and_grads("ld_dpo", raw, same, ref_same, ld_alpha=0.2)
    b, gb = values_and_grads("sigmoid", raw, same, ref_same)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)


def test_ld_dpo_reads_positions_from_the_mask_not_the_row():
    """The cached reference's rows start at the batch's first completion position, the policy's
    elsewhere: the shared length is counted along each answer's own tokens."""
    pol = logps([[[-1.0, -2.0, -3.0]], [[-1.0]]])
    shifted = Logps(torch.cat([torch.zeros(2, 1, 2, dtype=torch.float64), pol.tokens], -1),
                    torch.cat([torch.zeros(2, 1, 2, dtype=torch.bool), pol.mask], -1))
    ref = logps([[[0.0, 0.0, 0.0]], [[0.0]]])
    assert run("ld_dpo", shifted, ref).losses.item() == pytest.approx(run("ld_dpo", pol, ref).losses.item())


def trl_ld(pc_tokens, pr_tokens, rc_tokens, rr_tokens, mask, beta, ls, alpha):
    """TRL's ld_alpha: per answer, the log-prob of the first ℓ tokens (ℓ the shorter answer's
    length) plus α times the rest, for policy and reference, then its sigmoid loss."""
    F = torch.nn.functional
    lengths = mask.sum(-1)  # (2, B)
    shared = lengths.min(0).values
    prefix = torch.arange(mask.shape[-1]).expand(mask.shape[1], -1) < shared[:, None]

    def ld(tokens, m):
        public = (tokens * (m & prefix)).sum(-1)
        return public + alpha * ((tokens * m).sum(-1) - public)

    logits = (ld(pc_tokens, mask[0]) - ld(rc_tokens, mask[0])) - (ld(pr_tokens, mask[1]) - ld(rr_tokens, mask[1]))
    return -(1 - ls) * F.logsigmoid(beta * logits) - ls * F.logsigmoid(-beta * logits)


def test_ld_dpo_same_value_as_trls_formula():
    raw, mask, ref = random_pairs(seed=31, B=8)
    pol = Logps(raw.detach().masked_fill(~mask, 0.0), mask)
    ours = run("ld_dpo", pol, ref, ld_alpha=0.4, beta=0.3, label_smoothing=0.2).losses
    theirs = trl_ld(pol.tokens[0], pol.tokens[1], ref.tokens[0], ref.tokens[1], mask, 0.3, 0.2, 0.4)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("flags, field", [(["--loss", "fdpo", "--fdpo-alpha", "0"], "loss.fdpo_alpha"),
                                          (["--loss", "fdpo", "--fdpo-divergence", "hellinger"], "--fdpo-divergence"),
                                          (["--loss", "ld_dpo", "--ld-alpha", "1.5"], "loss.ld_alpha"),
                                          (["--loss", "dpo_rk", "--rk-nu", "1"], "loss.rk_nu"),
                                          (["--loss", "dpo_davidson", "--davidson-nu", "0"], "loss.davidson_nu")])
def test_bad_values_of_the_new_flags_are_one_line_errors(tmp_path, capsys, flags, field):
    from dpokit.cli import main

    rc = main(["dpo", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"),
               "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and field in err, err


def test_the_new_flags_reach_the_config():
    from dpokit.config import load_config

    c = load_config(None, {"model.path": "m", "data.train": "d", "loss.name": "sigmoid", "loss.wpo": True,
                           "loss.fdpo_divergence": "js", "loss.ld_alpha": 0.25})
    assert (c.loss.wpo, c.loss.fdpo_divergence, c.loss.ld_alpha) == (True, "js", 0.25)
