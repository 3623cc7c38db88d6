"""The ``item_ranker`` policy: a torch ranker over context and item feature columns, trained with
the registry's listwise losses through the same ``train()`` as every kind; its log-probs against a
naive computation, the Plackett–Luce slate probability by hand, and bad records as one-line errors."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.losses import get_loss
from dpokit.policies import build_policy_kind
from dpokit.policies.ranker import slate_logp, write_ranker
from dpokit.train import train
from dpokit.train.checkpoint import read_weights
from helpers import metrics

GENRES = ["jazz", "rock", "folk", "pop"]
ITEMS = [{"id": f"i{n}", "genre": GENRES[n % 4], "price": (n % 5) / 5} for n in range(24)]


def write_logs(path: Path, n: int, seed: int) -> Path:
    """Each user likes one genre (``taste``); of 4 candidates, the ones of that genre come first,
    then cheaper before dearer: the order is the true utility, best first."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            taste = rng.choice(GENRES)
            cands = rng.sample(ITEMS, 4)
            cands.sort(key=lambda it: (it["genre"] != taste, it["price"]))
            f.write(json.dumps({"context": {"taste": taste, "age": rng.random()},
                                "items": [it["id"] for it in cands]}) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranker")
    model = write_ranker(tmp / "ranker", ITEMS, context_numeric=["age"], context_categorical=["taste"],
                         item_numeric=["price"], item_categorical=["genre"], buckets=512, dim=8)
    return {"tmp": tmp, "model": model, "train": write_logs(tmp / "train.jsonl", 256, 0),
            "held": write_logs(tmp / "held.jsonl", 64, 1)}


def ranker_config(task, out: str, **overrides):
    base = {"model.policy": "item_ranker", "model.path": str(task["model"]), "data.train": str(task["train"]),
            "data.eval": str(task["held"]), "loss.name": "plackett_luce", "loss.beta": 1.0, "train.lr": 0.05,
            "train.optimizer": "adamw", "train.scheduler": "constant", "train.batch_size": 16,
            "train.max_steps": 48, "train.ref": "copy", "train.output": str(task["tmp"] / out),
            "train.progress": False, "train.registry": ""}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


def test_a_ranker_learns_held_out_rankings_through_train(task):
    """Step 0: policy == reference, so the Plackett–Luce loss of 4 candidates is log 24; after
    three epochs the held-out orders are mostly recovered (0.87 of pairs in order measured; chance 0.5)."""
    result = train(ranker_config(task, "copy"), log=lambda *_: None)
    log = metrics(task["tmp"] / "copy")
    assert log[0]["loss"] == pytest.approx(math.log(24), abs=1e-6)
    assert result.eval_metrics["rewards/accuracies"] > 0.8
    assert (result.final / "ranker.json").is_file() and (result.final / "items.jsonl").is_file()
    start, final = read_weights(task["model"]), read_weights(result.final)
    assert not torch.equal(start["ctx_cat.weight"], final["ctx_cat.weight"])
    torch.testing.assert_close(start["table_num"], final["table_num"])  # the item table is data, not trained


def test_softmax_dpo_trains_the_ranker_too(task):
    result = train(ranker_config(task, "sdpo", loss__name="softmax_dpo"), log=lambda *_: None)
    assert result.eval_metrics["rewards/accuracies"] > 0.75  # 0.82 measured


def test_log_probs_match_a_naive_two_tower_score(task):
    """log π(y_i|x) = s_i − log Σ_j exp(s_j) with s = c(x)·v(y) + b(y) written out by hand."""
    cfg = ranker_config(task, "naive")
    (task["tmp"] / "naive").mkdir()
    kind = build_policy_kind(cfg, get_loss("softmax_dpo"))
    model = kind.load(str(task["model"])).requires_grad_(False)
    records = kind.records(str(task["held"]), "list", "held", lambda *_: None)
    got = kind.logps(model, kind.batch(records, [0, 1], "cpu"), 4)
    for b, rec in enumerate(records[:2]):
        c = model.ctx_num.weight[:, 0] * rec.numeric[0] + model.ctx_cat.weight[rec.categorical[0]]
        scores = []
        for row in rec.items:
            v = (model.item_num.weight[:, 0] * model.table_num[row, 0] + model.item_cat.weight[model.table_cat[row, 0]]
                 + model.item_id.weight[model.table_id[row]])
            scores.append(float(c @ v + model.bias.weight[model.table_id[row], 0]))
        norm = math.log(sum(math.exp(s) for s in scores))
        for g in range(4):
            assert got.tokens[g, b, 0].item() == pytest.approx(scores[g] - norm, abs=1e-5)


def test_slate_log_probability_by_hand():
    """Scores (1, 0, −1) in slate order: [1 − log(e + 1 + e^−1)] + [0 − log(1 + e^−1)] + 0
    = −0.407606 − 0.313262 = −0.720868."""
    assert slate_logp(torch.tensor([1.0, 0.0, -1.0])).item() == pytest.approx(-0.720868, abs=1e-6)


def test_bad_records_name_file_row_and_field(task, tmp_path):
    kind = build_policy_kind(ranker_config(task, "bad"), get_loss("plackett_luce"))
    cases = [({"context": {"taste": "jazz", "age": 0.1}, "items": ["i1", "nope"]}, "items[1]", "unknown item id"),
             ({"context": {"taste": "jazz"}, "items": ["i1", "i2"]}, "age", "finite number"),
             ({"context": {"age": 0.2}, "items": ["i1", "i2"]}, "taste", "missing categorical"),
             ({"context": {"taste": "jazz", "age": 0.1}, "items": ["i1", "i2"], "weight": 0}, "weight", "positive")]
    for obj, field, msg in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"context": {"taste": "pop", "age": 0.5}, "items": ["i1", "i2"]}) + "\n"
                        + json.dumps(obj) + "\n")
        with pytest.raises(UserError, match=msg) as err:
            kind.records(str(path), "list", "train", lambda *_: None)
        assert err.value.where == f"{path}:2" and err.value.field == field


def test_the_command_line_trains_a_ranker_and_refuses_bad_logs(task, tmp_path):
    args = ["dpo", "--policy", "item_ranker", "--model", str(task["model"]), "--loss", "plackett_luce",
            "--max-steps", "2", "--ref", "copy", "--no-progress", "--registry", ""]
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args, "--data", str(task["train"]),
                           "--output", str(tmp_path / "ok")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": {"taste": "pop", "age": 0.5}, "items": ["i1", "zz"]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args, "--data", str(bad),
                           "--output", str(tmp_path / "bad")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bad.jsonl:1" in done.stderr
