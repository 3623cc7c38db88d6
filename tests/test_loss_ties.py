"""The losses that train on ties (ties.py): hand-derived values, a naive implementation from
the Rao–Kupper and Davidson models (floats for values, a float64 torch graph for gradients),
the three outcomes summing to 1, the limits where they are DPO, the tie indicator carried from
a data file into the batch, and one short learning run through the CLI on votes with ties.
TRL has no tie losses, so there is no TRL formula to compare with."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import helpers.task as task
from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.data import collate, read_records, tokenize_records
from dpokit.losses import LossContext, Logps, get_loss
from helpers import metrics, tiny_model_dir
from test_loss_family import cfg, logps, one, random_pairs


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(name, pol, ref, ties, **kw):
    return get_loss(name).fn(pol, ref, cfg(name=name, **kw), LossContext(ties=torch.tensor(ties)))


@pytest.mark.parametrize("name,tie,expected", [("dpo_rk", False, 0.551445), ("dpo_rk", True, 1.314827),
                                               ("dpo_davidson", False, 0.680270), ("dpo_davidson", True, 1.180270)])
def test_docstring_values(name, tie, expected):
    """β = 0.1, u = 10, default ν (2 for Rao–Kupper, 1 for Davidson), as each docstring derives."""
    out = run(name, logps(one(10.0, 0.0)), logps(one(0.0, 0.0)), [tie])
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["tie/probability"].item() == pytest.approx(math.exp(-1.314827 if name == "dpo_rk"
                                                                         else -1.180270), abs=1e-6)
    assert math.isnan(out.metrics["rewards/accuracies"].item()) == tie


def naive(name: str, a: float, b: float, beta: float, nu: float) -> tuple[float, float, float]:
    """(P(w ≻ l), P(l ≻ w), P(tie)) from the models' strengths λ = e^{β·r}, one pair."""
    lw, ll = math.exp(beta * a), math.exp(beta * b)
    if name == "dpo_rk":
        win, lose = lw / (lw + nu * ll), ll / (ll + nu * lw)
        return win, lose, (nu ** 2 - 1) * lw * ll / ((lw + nu * ll) * (ll + nu * lw))
    z = lw + ll + nu * math.sqrt(lw * ll)
    return lw / z, ll / z, nu * math.sqrt(lw * ll) / z


def naive_graph(name, tokens, mask, ref, ties, beta, nu):
    s, rs = (tokens * mask).sum(-1), (ref * mask).sum(-1)
    lw, ll = torch.exp(beta * (s[0] - rs[0])), torch.exp(beta * (s[1] - rs[1]))
    if name == "dpo_rk":
        win, tie = lw / (lw + nu * ll), (nu ** 2 - 1) * lw * ll / ((lw + nu * ll) * (ll + nu * lw))
    else:
        z = lw + ll + nu * torch.sqrt(lw * ll)
        win, tie = lw / z, nu * torch.sqrt(lw * ll) / z
    return -torch.log(torch.where(ties, tie, win))


@pytest.mark.parametrize("name,nu", [("dpo_rk", 2.0), ("dpo_rk", 1.3), ("dpo_davidson", 1.0), ("dpo_davidson", 0.2)])
def test_match_naive_values_and_gradients(name, nu):
    raw, mask, ref = random_pairs(seed=int(nu * 10), B=10)
    ties = torch.tensor([i % 3 == 0 for i in range(10)])
    key = "rk_nu" if name == "dpo_rk" else "davidson_nu"
    c = cfg(name=name, beta=0.3, **{key: nu})
    out = get_loss(name).fn(Logps(raw.masked_fill(~mask, 0.0), mask), ref, c, LossContext(ties=ties))
    s, r = (raw * mask).sum(-1).detach().tolist(), ref.sum.tolist()
    probs = [naive(name, s[0][i] - r[0][i], s[1][i] - r[1][i], 0.3, nu) for i in range(10)]
    assert all(sum(p) == pytest.approx(1.0, abs=1e-12) for p in probs)  # win, loss and tie: all outcomes
    expected = [-math.log(p[2] if t else p[0]) for p, t in zip(probs, ties.tolist())]
    torch.testing.assert_close(out.losses.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    (grad,) = torch.autograd.grad(out.losses.sum(), raw)
    raw2 = raw.detach().clone().requires_grad_(True)
    (grad_naive,) = torch.autograd.grad(naive_graph(name, raw2, mask.double(), ref.tokens, ties, 0.3, nu).sum(), raw2)
    torch.testing.assert_close(grad, grad_naive, atol=1e-9, rtol=1e-7)
    assert (grad[~mask] == 0).all() and grad[mask].abs().sum() > 0


@pytest.mark.parametrize("name,nu", [("dpo_rk", 1.0), ("dpo_davidson", 0.0)])
def test_without_room_for_ties_non_tied_pairs_are_dpo(name, nu):
    """Rao–Kupper ν = 1 and Davidson ν = 0 give ties probability 0: the non-tied loss is DPO's,
    values and gradients (no ties in the batch: ctx.ties is None, as for a batch the data
    pipeline gives without ties)."""
    raw, mask, ref = random_pairs(seed=3, B=9)
    key = "rk_nu" if name == "dpo_rk" else "davidson_nu"
    grads = []
    for loss, kw in ((name, {key: nu, "beta": 0.4}), ("sigmoid", {"beta": 0.4})):
        x = raw.detach().clone().requires_grad_(True)
        out = get_loss(loss).fn(Logps(x.masked_fill(~mask, 0.0), mask), ref, cfg(name=loss, **kw), LossContext())
        grads.append((out.losses.detach(), torch.autograd.grad(out.losses.sum(), x)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-12, rtol=1e-10)


def test_tie_loss_is_symmetric_and_lowest_at_equal_rewards():
    """A tied pair's answers have no order: swapping them leaves the loss; it is smallest at d = 0."""
    for name in ("dpo_rk", "dpo_davidson"):
        us = [-20.0, -3.0, 0.0, 3.0, 20.0]
        pol = logps([[[u] for u in us], [[0.0] for _ in us]])
        swapped = logps([[[0.0] for _ in us], [[u] for u in us]])
        ref = logps([[[0.0] for _ in us], [[0.0] for _ in us]])
        a = run(name, pol, ref, [True] * 5).losses
        torch.testing.assert_close(a, run(name, swapped, ref, [True] * 5).losses)
        assert a.argmin().item() == 2 and torch.isfinite(a).all()


# ----------------------------------------------------------------------------- data path and CLI

def votes(n: int, seed: int, tie_every: int) -> list[dict]:
    """The learning task as votes: a/b in random order; every ``tie_every``-th item a tie of two
    answers from the preferred word group."""
    rng = random.Random(seed)
    out = []
    for i, rec in enumerate(task.pairs(n, seed)):
        if i % tie_every == 0:
            out.append({"prompt": rec["prompt"], "response_a": rec["chosen"], "response_b":
                        task._answer(rng, i % 8), "votes": ["tie", "tie", "a"]})
        elif rng.random() < 0.5:
            out.append({"prompt": rec["prompt"], "response_a": rec["chosen"], "response_b": rec["rejected"],
                        "votes": ["a", "a", "b"]})
        else:
            out.append({"prompt": rec["prompt"], "response_a": rec["rejected"], "response_b": rec["chosen"],
                        "votes": ["b", "tie", "b"]})
    return out


def test_ties_reach_the_batch(tmp_path, tiny_tokenizer):
    path = task.write(tmp_path / "votes.jsonl", votes(12, seed=2, tie_every=4))
    records, _ = tokenize_records(read_records(path, "pair", DataConfig(ties="keep")), tiny_tokenizer, 64, 32)
    batch = collate(records, tiny_tokenizer.pad_token_id)
    expected = [(int(r.source.rsplit(":", 1)[1]) - 1) % 4 == 0 for r in records]  # lines 1, 5, 9 are ties
    assert batch["ties"].tolist() == expected and sum(expected) >= 2
    untied = [r for r, t in zip(records, expected) if not t]
    assert "ties" not in collate(untied, tiny_tokenizer.pad_token_id)  # a batch without ties: no key


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("ties"))


def test_training_on_ties_is_refused_for_a_loss_that_does_not_take_them(model, tmp_path, capsys):
    data = task.write(tmp_path / "v.jsonl", votes(8, seed=1, tie_every=4))
    rc = main(["dpo", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o"), "--ties", "keep"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "data.ties" in err and "dpo_rk" in err, err


def test_dpo_rk_learns_from_votes_with_ties_through_the_cli(model, tmp_path):
    """25 steps of 8 records from votes where every 5th pair is a tie: the tied pairs reach the
    loss (their tie probability is logged, their accuracy is not), and held-out reward accuracy
    on untied pairs rises from chance to above 0.9."""
    data = task.write(tmp_path / "votes.jsonl", votes(400, seed=1, tie_every=5))
    held = task.write(tmp_path / "held.jsonl", task.pairs(64, seed=99))
    out = tmp_path / "run"
    assert main(["dpo", "--model", str(model), "--data", str(data), "--output", str(out), "--loss", "dpo_rk",
                 "--ties", "keep", "--rk-nu", "1.5", "--max-steps", "25", "--batch-size", "8", "--lr", "1e-2",
                 "--scheduler", "constant", "--no-progress", "--max-length", "64", "--max-prompt-length", "32",
                 "--ref-cache-dir", str(tmp_path / "refcache")]) == 0
    report = json.loads((out / "data_report_train.json").read_text())
    assert not any("tie" in reason for reason in report["dropped"]), report["dropped"]  # ties kept
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"]["rk_nu"] == 1.5
    rows = metrics(out)
    assert all(0 < m["tie/probability"] < 1 for m in rows)
    tok = AutoTokenizer.from_pretrained(model)
    policy, start = AutoModelForCausalLM.from_pretrained(out / "final"), AutoModelForCausalLM.from_pretrained(model)
    assert task.reward_accuracy(policy, start, tok, held) > 0.9


def test_ties_survive_the_data_cache(tmp_path, tiny_tokenizer):
    from dpokit.data.cache import load_tokenized

    path = task.write(tmp_path / "votes.jsonl", votes(12, seed=2, tie_every=4))
    runs = [load_tokenized(path, "pair", tiny_tokenizer, DataConfig(ties="keep"), 64, 32, tmp_path / f"r{i}.json",
                           tmp_path / "cache") for i in range(2)]
    (fresh, _, hit0), (cached, _, hit1) = runs
    assert (hit0, hit1) == (False, True)
    assert [r.tie for r in cached] == [r.tie for r in fresh] and sum(r.tie for r in fresh) >= 2


def test_the_scorer_policy_carries_ties_too(tmp_path):
    """The second policy kind (linear_scorer) builds its own batches: tied pairs are marked there too."""
    from dpokit.config import load_config
    from dpokit.policies.scorer import LinearScorer

    path = task.write(tmp_path / "votes.jsonl", votes(12, seed=2, tie_every=4))
    cfg = load_config(None, {"model.path": "m", "data.train": str(path), "data.ties": "keep", "loss.name": "dpo_rk",
                             "train.output": str(tmp_path)})
    scorer = LinearScorer(cfg, 64)
    records = scorer.records(str(path), "pair", "train", log=lambda *_: None)
    expected = [(int(r.source.rsplit(":", 1)[1]) - 1) % 4 == 0 for r in records]
    batch = scorer.batch(records, list(range(len(records))), torch.device("cpu"))
    assert batch["ties"].tolist() == expected and sum(expected) >= 2
