"""Logged-bandit records: each kind of bad record as one line naming file, row and field (or
skipped and counted), training records from clicks on a hand-made log, and a ranker trained by
the one loop on the simulator's clicks that the simulator then scores as better."""

from __future__ import annotations

import json
import math

import pytest

from dpokit.config import load_config
from dpokit.config.rank import SimulateConfig
from dpokit.data.report import DataReport
from dpokit.errors import UserError
from dpokit.rank.logs import read_log, training_records, write_jsonl
from dpokit.rank.simulate import SlatePolicy, World, ranker_scorer

GOOD = {"impression": 0, "context": {"user": "u1", "x0": 0.5}, "slate": ["a", "b", "c"], "position": 2,
        "item": "b", "click": 1, "propensity": 0.25}
ITEMS = ["a", "b", "c", "d"]


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD = [({"propensity": 0}, "propensity", "in \\(0, 1\\]"),
       ({"propensity": 1.5}, "propensity", "in \\(0, 1\\]"),
       ({"propensity": "0.3"}, "propensity", "finite number"),
       ({"item": "d"}, "item", "'d' is not in the slate"),
       ({"item": "c"}, "item", "shown at position 3, not at position 2"),
       ({"position": 4}, "position", "outside the slate of 3"),
       ({"position": 0}, "position", "≥ 1"),
       ({"slate": ["a", "zz", "c"]}, "slate[1]", "unknown item id 'zz'"),
       ({"slate": None, "item": "zz"}, "item", "unknown item id 'zz'"),
       ({"context": {"user": "u1"}}, "context.x0", "missing feature column"),
       ({"context": {"user": "u1", "x0": "high"}}, "context.x0", "not a finite number"),
       ({"click": 2}, "click", "0 or 1")]


@pytest.mark.parametrize("change,field,message", BAD)
def test_each_bad_record_is_one_line_naming_file_row_and_field(tmp_path, change, field, message):
    path = write_log(tmp_path / "log.jsonl", [GOOD, {**GOOD, **change}])
    with pytest.raises(UserError, match=message) as err:
        read_log(path, ITEMS, ["user", "x0"], numeric=["x0"])
    assert err.value.where == f"{path}:2" and err.value.field == field
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}:2: field '{field}'")


def test_skipping_counts_every_bad_record(tmp_path):
    rows = [GOOD] + [{**GOOD, **change} for change, _, _ in BAD] + [{**GOOD, "position": 1, "item": "a"}]
    path = write_log(tmp_path / "log.jsonl", rows)
    (tmp_path / "log.jsonl").write_text(path.read_text() + "not json\n")
    report = DataReport()
    records = read_log(path, ITEMS, ["user", "x0"], on_error="skip", report=report, numeric=["x0"])
    assert len(records) == 2 and report.rows == len(rows) + 1
    assert report.total("skipped") == len(BAD) + 1 and report.records_out == 2
    assert any("propensity" in reason for _, reason in report.counts)


def test_training_records_from_a_hand_log(tmp_path):
    """Impression 0 shows a, b, c with a click on c (propensity 0.2), impression 1 shows d, a with
    clicks on both (0.5 each), impression 2 has no click. pairs: (c > a), (c > b) of weight 5; none
    from impression 1 (no unclicked item). skip_above: the same two (a and b are above c). lists of
    2 negatives: [c, a, b]. A clip of 3 caps the weight; without IPS it is 1."""
    def rec(imp, pos, slate, click, prop):
        return {"impression": imp, "context": {"user": "u"}, "slate": slate, "position": pos,
                "item": slate[pos - 1], "click": click, "propensity": prop}
    s0, s1 = ["a", "b", "c"], ["d", "a"]
    rows = [rec(0, 1, s0, 0, .3), rec(0, 3, s0, 1, .2), rec(0, 2, s0, 0, .3), rec(1, 1, s1, 1, .5),
            rec(1, 2, s1, 1, .5), rec(2, 1, s1, 0, .5), rec(2, 2, s1, 0, .5)]
    logged = read_log(write_log(tmp_path / "log.jsonl", rows), ITEMS)
    pairs, counts = training_records(logged, "pairs")
    assert [p["items"] for p in pairs] == [["c", "a"], ["c", "b"]] and {p["weight"] for p in pairs} == {5.0}
    assert counts == {"impressions": 3, "clicks": 3, "without_negatives": 2, "records": 2}
    above, _ = training_records(logged, "skip_above")
    assert [p["items"] for p in above] == [["c", "a"], ["c", "b"]]
    lists, _ = training_records(logged, "lists", negatives=2, clip=3.0)
    assert lists == [{"context": {"user": "u"}, "items": ["c", "a", "b"], "weight": 3.0,
                      "log_propensities": [math.log(.2), math.log(.3), math.log(.3)]}]
    assert training_records(logged, "pairs", ips=False)[0][0]["weight"] == 1.0
    # skip-above keeps only what lies above the click: a click at the top gives nothing
    top = read_log(write_log(tmp_path / "top.jsonl", [rec(0, 1, s0, 1, .3), rec(0, 2, s0, 0, .3)]), ITEMS)
    assert training_records(top, "skip_above")[0] == [] and len(training_records(top, "pairs")[0]) == 1


def test_dpo_on_simulated_clicks_improves_the_true_values(tmp_path):
    """Clicked-over-shown pairs from 3 000 logged slates, IPS-weighted (clipped at 20), train a fresh
    ranker with DPO (β = 1, 60 steps) from its random start as the reference; the simulator's exact
    click rate and NDCG@3 of its greedy slates rise over those of the start."""
    from dpokit.policies.ranker import write_ranker
    from dpokit.train import train

    world = World(SimulateConfig(users=60, items=16, seed=2).validate())
    log = write_log(tmp_path / "log.jsonl", world.sample_log(3000, seed=1))
    records, counts = training_records(read_log(log, world.item_ids), "pairs", clip=20.0)
    assert counts["records"] > 500 and all(math.isfinite(r["weight"]) and r["weight"] > 0 for r in records)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    start = write_ranker(tmp_path / "start", world.item_table(), buckets=512, dim=8, seed=0, **world.ranker_columns())
    cfg = load_config(None, {"model.policy": "item_ranker", "model.path": str(start), "data.train": str(data),
                             "loss.name": "sigmoid", "loss.beta": 1.0, "train.lr": 0.05, "train.optimizer": "adamw",
                             "train.scheduler": "constant", "train.batch_size": 32, "train.max_steps": 60,
                             "train.ref": "copy", "train.output": str(tmp_path / "run"), "train.progress": False,
                             "train.registry": ""})
    result = train(cfg, log=lambda *_: None)
    before = world.true_values(SlatePolicy(ranker_scorer(start, world.item_ids)))
    after = world.true_values(SlatePolicy(ranker_scorer(result.final, world.item_ids)))
    assert after["click_rate"] > before["click_rate"] + 0.02
    assert after["ndcg@3"] > before["ndcg@3"] + 0.05
