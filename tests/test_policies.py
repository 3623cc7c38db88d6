"""The policy seam: a second kind of policy (a linear scorer over candidate items) trained with a
listwise loss through the same ``train()`` as the causal LM, the reference strategies and
resumes working for it unchanged, and its log-probs checked against a naive computation."""

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
from dpokit.policies.scorer import ScorerModel, features, write_scorer
from dpokit.train import train
from dpokit.train.checkpoint import read_weights
from helpers import metrics

TOPICS = {"sports": ["football", "tennis", "cycling", "rowing"], "cooking": ["baking", "grilling", "pasta", "curry"],
          "music": ["jazz", "piano", "opera", "violin"], "travel": ["hiking", "beaches", "museums", "trains"]}
NOISE = "new old young city village weekend morning evening tall".split()


def write_rankings(path: Path, n: int, seed: int) -> Path:
    """Each user ranks the four topics in an order the prompt names (``first_music second_travel
    ...``); the answer ranks one item of each topic in that order."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            order = rng.sample(sorted(TOPICS), 4)
            prompt = " ".join(f"{place}_{t}" for place, t in zip(("first", "second", "third", "fourth"), order))
            prompt += " " + " ".join(rng.sample(NOISE, 2))
            f.write(json.dumps({"prompt": prompt, "ranking": [f"show about {rng.choice(TOPICS[t])}" for t in order]})
                    + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scorer")
    return {"tmp": tmp, "model": write_scorer(tmp / "scorer", buckets=4096),
            "train": write_rankings(tmp / "train.jsonl", 256, 0), "held": write_rankings(tmp / "held.jsonl", 32, 1)}


def scorer_config(task, out: str, **overrides):
    base = {"model.policy": "linear_scorer", "model.path": str(task["model"]), "data.train": str(task["train"]),
            "data.eval": str(task["held"]), "loss.name": "plackett_luce", "loss.beta": 1.0, "train.lr": 3.0,
            "train.optimizer": "sgd", "train.scheduler": "constant", "train.batch_size": 8, "train.max_steps": 32,
            "train.ref": "copy", "train.output": str(task["tmp"] / out), "train.progress": False,
            "train.registry": ""}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


def test_a_scorer_learns_the_ranking_through_the_same_train(task):
    """Step 0: policy == reference, so every implicit reward is 0 and the Plackett–Luce loss of
    k = 4 candidates is Σ_i log(k − i + 1) = log 4 + log 3 + log 2 = log 24; after one epoch of
    SGD the held-out rankings are recovered (pairs in order: 0.99 measured; chance is 0.5)."""
    result = train(scorer_config(task, "copy"), log=lambda *_: None)
    log = metrics(task["tmp"] / "copy")
    assert log[0]["loss"] == pytest.approx(math.log(24), abs=1e-6)
    assert result.eval_metrics["rewards/accuracies"] > 0.95
    assert result.eval_metrics["loss"] < 0.3 * math.log(24)
    saved = read_weights(result.final)
    assert set(saved) == {"weights.weight"} and saved["weights.weight"].abs().sum() > 0
    assert (result.final / "manifest.json").is_file()  # written as an atomic folder like an LM's


def test_cached_reference_equals_the_copied_one(task):
    """The on-disk reference cache works for any kind: the same losses as a live frozen copy."""
    train(scorer_config(task, "cached", train__ref="precomputed"), log=lambda *_: None)
    copy_log = [m["loss"] for m in metrics(task["tmp"] / "copy") if "loss" in m]
    cached_log = [m["loss"] for m in metrics(task["tmp"] / "cached") if "loss" in m]
    assert cached_log == pytest.approx(copy_log, abs=1e-6)


def test_resumed_equals_uninterrupted(task):
    train(scorer_config(task, "half", train__save_steps=16), log=lambda *_: None)
    # a run stopped after step 16: its checkpoint-16 continued
    out = task["tmp"] / "half"
    for name in ("final", "metrics.jsonl"):
        target = out / name
        if target.is_dir():
            __import__("shutil").rmtree(target)
        else:
            target.unlink()
    train(scorer_config(task, "half", train__save_steps=16, train__resume=True),
          log=lambda *_: None)
    torch.testing.assert_close(read_weights(out / "final"), read_weights(task["tmp"] / "copy" / "final"))


def test_log_probs_match_a_naive_softmax(task):
    """log π(y_i|x) = s_i − log Σ_j exp(s_j), with s summed weight by weight from the features."""
    cfg = scorer_config(task, "naive")
    (task["tmp"] / "naive").mkdir()
    kind = build_policy_kind(cfg, get_loss("softmax_dpo"))
    model = ScorerModel(4096)
    torch.nn.init.normal_(model.weights.weight)
    records = kind.records(str(task["held"]), "list", "held", lambda *_: None)
    batch = kind.batch(records, [0, 1, 2], "cpu")
    got = kind.logps(model, batch, 4)
    w = model.weights.weight[:, 0].tolist()
    for b, rec in enumerate(records[:3]):
        scores = [sum(w[i] for i in f) for f in rec.features]
        norm = math.log(sum(math.exp(s) for s in scores))
        for g in range(4):
            assert got.tokens[g, b, 0].item() == pytest.approx(scores[g] - norm, abs=1e-5)
    assert got.mask.all() and got.count.eq(1).all()


def test_features_pair_context_words_with_item_words():
    ids = features("User likes jazz", "show jazz", 1 << 20)
    assert len(ids) == 3 * 2 + 2  # every (context word, item word) pair, then each item word
    assert features("user likes jazz", "show jazz", 1 << 20) == ids  # case folded, stable across runs


def test_settings_a_scorer_cannot_honour_fail_before_loading(task):
    with pytest.raises(UserError, match="takes sft records"):
        build_policy_kind(scorer_config(task, "x", loss__name="sft"), get_loss("sft"))
    with pytest.raises(UserError, match="no adapters"):
        build_policy_kind(scorer_config(task, "x", lora__enabled=True, train__ref="copy"), get_loss("softmax_dpo"))
    with pytest.raises(UserError, match="not a linear_scorer folder"):
        build_policy_kind(scorer_config(task, "x", model__path=str(task["tmp"])), get_loss("softmax_dpo"))
    with pytest.raises(UserError, match="unknown policy 'ranker'.*causal_lm, linear_scorer"):
        build_policy_kind(scorer_config(task, "x", model__policy="ranker"), get_loss("softmax_dpo"))


def test_the_command_line_trains_a_scorer(task):
    out = task["tmp"] / "cli"
    args = ["dpo", "--policy", "linear_scorer", "--model", str(task["model"]), "--data", str(task["train"]),
            "--loss", "plackett_luce", "--beta", "1", "--lr", "0.1", "--optimizer", "sgd", "--max-steps", "2",
            "--ref", "copy", "--no-progress", "--output", str(out), "--registry", ""]
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(metrics(out)) == 2 and (out / "final" / "scorer.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "dpokit.cli", *args[:-2], "--output", str(out / "b"), "--loss", "kto"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "loss.name" in bad.stderr


def test_online_rounds_refuse_a_policy_that_cannot_sample(tmp_path):
    from dpokit.online.config import OnlineConfig
    from helpers.online import tiny_settings

    with pytest.raises(UserError, match="only causal_lm"):
        load_config(None, tiny_settings(tmp_path, tmp_path / "out", model__policy="linear_scorer"), root=OnlineConfig)
