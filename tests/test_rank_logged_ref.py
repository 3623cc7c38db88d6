"""``--ref logged``: the logging policy's propensities, carried by the records made from a log, as
the reference of a ranker's DPO update. The first step's loss and rewards against a hand
computation on a tiny log, a CLI run that the simulator scores as better, and the error paths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.config.rank import SimulateConfig
from dpokit.errors import UserError
from dpokit.policies.ranker import load_ranker, score_contexts, write_ranker
from dpokit.rank.logs import read_log, training_records, write_jsonl
from dpokit.rank.simulate import SlatePolicy, World, ranker_scorer

ITEMS = [{"id": i, "price": p} for i, p in (("a", 0.1), ("b", 0.5), ("c", 0.9), ("d", 0.3))]


def _rec(imp, pos, slate, click, prop, user):
    return {"impression": imp, "context": {"user": user, "x0": 0.2 if user == "u1" else -0.7}, "slate": slate,
            "position": pos, "item": slate[pos - 1], "click": click, "propensity": prop}


def _config(start, data, out, **more):
    return {"model.policy": "item_ranker", "model.path": str(start), "data.train": str(data), "loss.name": "sigmoid",
            "loss.beta": 0.5, "train.lr": 1e-3, "train.optimizer": "sgd", "train.scheduler": "constant",
            "train.batch_size": 8, "train.max_steps": 1, "train.ref": "logged", "train.output": str(out),
            "train.progress": False, "train.registry": "", **more}


def test_first_step_loss_equals_the_hand_computation(tmp_path):
    """Three impressions: u1 sees a, b, c and clicks c (propensity 0.2; a and b 0.5 and 0.3);
    u2 sees d, a and clicks d (0.6; a 0.4); u1 sees b, d without a click. Pairs (c > a), (c > b)
    of weight 5 and (d > a) of weight 1/0.6. With the start's scores s, the sigmoid loss of a pair
    is −log σ(β[(s_w − s_l) − (log p_w − log p_l)]), weighted, averaged over the three records;
    the chosen reward is β(log π(w | {w, l}) − log(p_w / (p_w + p_l)))."""
    rows = [_rec(0, 1, ["a", "b", "c"], 0, .5, "u1"), _rec(0, 2, ["a", "b", "c"], 0, .3, "u1"),
            _rec(0, 3, ["a", "b", "c"], 1, .2, "u1"), _rec(1, 1, ["d", "a"], 1, .6, "u2"),
            _rec(1, 2, ["d", "a"], 0, .4, "u2"), _rec(2, 1, ["b", "d"], 0, .5, "u1"), _rec(2, 2, ["b", "d"], 0, .5, "u1")]
    log = write_jsonl(tmp_path / "log.jsonl", rows)
    pairs, _ = training_records(read_log(log), "pairs")
    assert [p["items"] for p in pairs] == [["c", "a"], ["c", "b"], ["d", "a"]]
    assert pairs[0]["log_propensities"] == [math.log(.2), math.log(.5)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    start = write_ranker(tmp_path / "start", ITEMS, context_numeric=["x0"], context_categorical=["user"],
                         item_numeric=["price"], buckets=64, dim=4, seed=3)
    from dpokit.train import train

    train(load_config(None, _config(start, data, tmp_path / "run")), log=lambda *_: None)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])

    module = load_ranker(str(start))
    beta, losses, chosen = 0.5, [], []
    for p in pairs:  # a naive loop, one pair at a time
        scores = score_contexts(module, [p["context"]], "test")[0].double()
        s_w, s_l = (scores["abcd".index(i)] for i in p["items"])
        lp_w, lp_l = p["log_propensities"]
        margin = beta * ((s_w - s_l) - (lp_w - lp_l))
        losses.append(p["weight"] * -torch.nn.functional.logsigmoid(margin))
        pol_w = s_w - torch.logaddexp(s_w, s_l)
        ref_w = lp_w - math.log(math.exp(lp_w) + math.exp(lp_l))
        chosen.append(beta * (pol_w - ref_w))
    assert first["loss"] == pytest.approx(float(sum(losses) / 3), rel=1e-5)
    assert first["rewards/chosen"] == pytest.approx(float(sum(chosen) / 3), rel=1e-4, abs=1e-6)


def test_dpo_with_the_logged_reference_raises_the_true_click_rate(tmp_path, capsys):
    """Through the CLI: ``dpokit rank simulate``, ``rank records``, then ``dpokit dpo --ref logged``
    from a random start; the simulator's exact click rate of its softmax slates rises."""
    sim = tmp_path / "sim"
    assert main(["rank", "simulate", "--out", str(sim), "--impressions", "3000", "--users", "60",
                 "--items", "16", "--seed", "2"]) == 0
    assert main(["rank", "records", "--log", str(sim / "log.jsonl"), "--out", str(tmp_path / "pairs.jsonl"),
                 "--clip", "20"]) == 0
    world = World(SimulateConfig(users=60, items=16, seed=2))
    start = write_ranker(tmp_path / "start", world.item_table(), buckets=512, dim=8, seed=0, **world.ranker_columns())
    assert main(["dpo", "--policy", "item_ranker", "--model", str(start), "--data", str(tmp_path / "pairs.jsonl"),
                 "--loss", "sigmoid", "--beta", "1", "--lr", "0.05", "--optimizer", "adamw", "--scheduler", "constant",
                 "--batch-size", "32", "--max-steps", "60", "--ref", "logged", "--output", str(tmp_path / "run"),
                 "--no-progress", "--registry", ""]) == 0
    before = world.true_values(SlatePolicy(ranker_scorer(start, world.item_ids), "softmax"))["click_rate"]
    after = world.true_values(SlatePolicy(ranker_scorer(tmp_path / "run" / "final", world.item_ids), "softmax"))
    assert after["click_rate"] > before + 0.02, (before, after)


def test_the_error_paths(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bare.jsonl", [{"context": {"user": "u1", "x0": 0.1}, "items": ["a", "b"]}])
    start = write_ranker(tmp_path / "start", ITEMS, context_numeric=["x0"], context_categorical=["user"],
                         item_numeric=["price"], buckets=64, dim=4)
    # a policy kind without logged propensities
    with pytest.raises(UserError, match="'logged' takes the reference from the logged propensities") as err:
        load_config(None, {**_config(start, data, tmp_path / "r"), "model.policy": "causal_lm"})
    assert err.value.field == "train.ref"
    with pytest.raises(UserError, match="drop --ref-model"):
        load_config(None, {**_config(start, data, tmp_path / "r"), "model.ref_path": str(start)})
    # records without propensities: the file, the row and the field
    assert main(["dpo", "--policy", "item_ranker", "--model", str(start), "--data", str(data), "--ref", "logged",
                 "--output", str(tmp_path / "r"), "--no-progress", "--registry", ""]) == 2
    assert f"{data}:1: field 'log_propensities': missing: --ref logged needs" in capsys.readouterr().err
    # malformed propensities, whatever the reference
    from dpokit.train import train

    for bad, field in (([-0.1], "log_propensities"), ([0.3, -1.0], "log_propensities[0]"),
                       ([-1.0, float("nan")], "log_propensities[1]")):
        path = write_jsonl(tmp_path / "badp.jsonl", [{"context": {"user": "u1", "x0": 0.1}, "items": ["a", "b"],
                                                       "log_propensities": bad}])
        with pytest.raises(UserError) as err:
            train(load_config(None, _config(start, path, tmp_path / "r", **{"train.ref": "copy"})), log=lambda *_: None)
        assert err.value.where == f"{path}:1" and err.value.field == field
