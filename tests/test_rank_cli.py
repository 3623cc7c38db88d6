"""``dpokit rank simulate|eval``: a simulated log, a ranker folder evaluated on it with the true
values from the sidecar, and a bad log refused in one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpokit.cli import main
from dpokit.config.rank import RankEvalConfig, SimulateConfig
from dpokit.errors import UserError
from dpokit.policies.ranker import write_ranker
from dpokit.rank.commands import evaluate_ranker
from dpokit.rank.simulate import SlatePolicy, World, ranker_scorer


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank_cli")
    assert main(["rank", "simulate", "--out", str(tmp / "sim"), "--impressions", "4000", "--users", "30",
                 "--items", "10", "--seed", "4"]) == 0
    sidecar = json.loads((tmp / "sim" / "simulator.json").read_text())
    items = [json.loads(line) for line in (tmp / "sim" / "items.jsonl").read_text().splitlines()]
    ranker = write_ranker(tmp / "ranker", items, buckets=256, dim=4, seed=2, **sidecar["columns"])
    return tmp, sidecar, ranker


def test_simulate_writes_the_log_items_and_sidecar(simulated, capsys):
    tmp, sidecar, _ = simulated
    lines = (tmp / "sim" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 12000 == sidecar["records"]
    first = json.loads(lines[0])
    assert set(first) == {"impression", "context", "slate", "position", "item", "click", "propensity"}
    assert sidecar["config"]["impressions"] == 4000 and sidecar["config"]["seed"] == 4
    world = World(SimulateConfig(**sidecar["config"]))
    assert sidecar["logger"]["click_rate"] == pytest.approx(world.true_values(world.logger())["click_rate"])


def test_eval_prints_estimates_and_true_values(simulated, capsys):
    tmp, _, ranker = simulated
    log = str(tmp / "sim" / "log.jsonl")
    assert main(["rank", "eval", "--ranker", str(ranker), "--log", log, "--target", "softmax",
                 "--output", str(tmp / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("IPS", "SNIPS", "DR", "true"))
    result = evaluate_ranker(RankEvalConfig(ranker=str(ranker), log=log, target="softmax").validate())
    assert json.loads((tmp / "eval.json").read_text()) == json.loads(json.dumps(result))
    world = World(SimulateConfig(users=30, items=10, seed=4, impressions=4000))
    true = world.true_values(SlatePolicy(ranker_scorer(ranker, world.item_ids), "softmax"))["click_rate"]
    assert result["true"]["click_rate"] == pytest.approx(true)
    assert f"{true:.5f}" in out
    for est in result["estimates"]:  # the seeded log's intervals hold the exact value
        assert est["low"] <= true <= est["high"], est


def test_a_bad_log_is_one_line_and_exit_code_2(simulated, tmp_path, capsys):
    tmp, _, ranker = simulated
    rows = (tmp / "sim" / "log.jsonl").read_text().splitlines()[:3]
    bad = json.loads(rows[1])
    bad["propensity"] = 0
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join([rows[0], json.dumps(bad), rows[2]]) + "\n")
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", "rank", "eval", "--ranker", str(ranker), "--log",
                           str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"{path}:2: field 'propensity'" in done.stderr
    assert main(["rank", "eval", "--ranker", str(ranker), "--log", str(path), "--on-error", "skip",
                 "--target", "softmax"]) == 0
    out = capsys.readouterr().out
    assert "2 records, 1 skipped" in out and "field 'propensity': must be in (0, 1]; got 0: 1" in out


def test_records_and_a_held_out_log_of_the_same_world(simulated, capsys):
    """``records`` writes what ``training_records`` makes of the log; ``--log-seed`` gives another
    log of the same world (the same logger truth, other clicks)."""
    from dpokit.rank.logs import read_log, training_records

    tmp, sidecar, _ = simulated
    log, out = tmp / "sim" / "log.jsonl", tmp / "lists.jsonl"
    assert main(["rank", "records", "--log", str(log), "--items", str(tmp / "sim" / "items.jsonl"), "--out", str(out),
                 "--mode", "lists", "--negatives", "2", "--clip", "10"]) == 0
    want, counts = training_records(read_log(log), "lists", negatives=2, clip=10.0)
    assert [json.loads(line) for line in out.read_text().splitlines()] == want
    assert f"-> {counts['records']} lists records" in capsys.readouterr().out
    assert main(["rank", "simulate", "--out", str(tmp / "held"), "--impressions", "4000", "--users", "30",
                 "--items", "10", "--seed", "4", "--log-seed", "2"]) == 0
    held = json.loads((tmp / "held" / "simulator.json").read_text())
    assert held["logger"] == sidecar["logger"]
    assert (tmp / "held" / "log.jsonl").read_text() != log.read_text()


def test_a_missing_sidecar_named_by_truth_is_an_error(simulated):
    tmp, _, ranker = simulated
    with pytest.raises(UserError, match="file not found") as err:
        evaluate_ranker(RankEvalConfig(ranker=str(ranker), log=str(tmp / "sim" / "log.jsonl"),
                                       truth=str(tmp / "nope.json"), target="softmax").validate())
    assert err.value.field == "truth"
