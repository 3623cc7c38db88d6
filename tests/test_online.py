"""``dpokit online`` on the tiny model with a programmatic judge (tests/helpers/judges.py): rounds,
files, report, pair and discard counts, the reference of each round, resuming, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.online import OnlineConfig, online
from dpokit.online.judging import CandidateJudge
from dpokit.online.pairs import Candidates, form_pairs, pair_indices
from dpokit.store.versions import Registry
from helpers.data import read_jsonl
from helpers.online import online_settings, write_prompts
from helpers import tiny_model_dir

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online")
    return tmp, tiny_model_dir(tmp), write_prompts(tmp / "prompts.jsonl", 8), write_prompts(tmp / "held.jsonl", 8, 100)


def settings(files, out: Path, **extra) -> dict:
    tmp, model, prompts, held = files
    return online_settings(model, out, prompts, held, **extra)


def run(files, out: Path, log=None, **extra):
    cfg = load_config(None, settings(files, out, **extra), root=OnlineConfig)
    return online(cfg, log=log or (lambda *_: None))


@pytest.fixture(scope="module")
def fixed_run(files):
    out = files[0] / "fixed"
    run(files, out, train__save_steps=1)
    return out


def test_two_rounds_write_models_pairs_report_and_plot(fixed_run, files):
    report = json.loads((fixed_run / "online_report.json").read_text())
    assert [e["round"] for e in report["rounds"]] == [1, 2]
    assert report["settings"]["online"]["judge"] == "helpers.judges:count_e"
    assert (fixed_run / "reward_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for e in report["rounds"]:
        rdir = fixed_run / f"round-{e['round']}"
        assert (rdir / "final" / "model.safetensors").is_file() and e["model"] == str(rdir / "final")
        lo, hi = e["win_rate_ci95"]
        assert 0 <= lo <= e["win_rate"] <= hi <= 1 and e["wins"] + e["ties"] + e["losses"] == e["eval_prompts"] == 8
        assert e["kl_sampled"] == pytest.approx(json.loads((rdir / "eval" / "eval_report.json").read_text())
                                                ["kl_sampled"])
        assert e["mean_length"] > 0 and e["train_steps"] >= 1
        # best-worst: one pair per prompt whose answers differ, the other K-2 answers discarded
        assert e["candidates"] == 8 * 4
        assert e["pairs"] == 8 - e["prompts_without_pair"] >= 1
        assert e["discarded"] == e["candidates"] - 2 * e["pairs"]
        pairs = read_jsonl(rdir / "pairs.jsonl")
        assert len(pairs) == e["pairs"]
        assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
        assert all(p["score_chosen"] == p["chosen"][0]["content"].lower().count("e") for p in pairs)
        cands = read_jsonl(rdir / "candidates.jsonl")
        assert sum(len(c["answers"]) for c in cands) == 32
        assert all(max(c["scores"]) == next(p["score_chosen"] for p in pairs if p["prompt"] == c["prompt"])
                   for c in cands if c["pairs"])


def test_fixed_reference_is_the_initial_model(fixed_run, files):
    model = files[1]
    import yaml

    second = yaml.safe_load((fixed_run / "round-2" / "config.yaml").read_text())
    assert second["model"]["path"] == str(fixed_run / "round-1" / "final")
    assert second["model"]["ref_path"] == str(model)
    first_sampled = json.loads((fixed_run / "round-2" / "sampling.json").read_text())["policy"]
    assert first_sampled == str(fixed_run / "round-1" / "final")


def test_rerun_skips_finished_rounds_and_refuses_other_settings(fixed_run, files):
    stamp = (fixed_run / "round-2" / "final" / "model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    result = run(files, fixed_run, log=lines.append, train__save_steps=1)
    assert "[online] rounds 1–2 are finished" in lines and len(result.rounds) == 2
    assert (fixed_run / "round-2" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="online.min_margin"):
        run(files, fixed_run, online__min_margin=1.0, train__save_steps=1)


def test_resume_after_losing_the_last_final(fixed_run, files):
    """Round 2's final/ is deleted: its pairs are reused and training continues from its newest checkpoint."""
    round1 = (fixed_run / "round-1" / "final" / "model.safetensors").stat().st_mtime_ns
    pairs = (fixed_run / "round-2" / "pairs.jsonl").read_text()
    steps = json.loads((fixed_run / "online_report.json").read_text())["rounds"][1]["train_steps"]
    shutil.rmtree(fixed_run / "round-2" / "final")
    lines: list[str] = []
    result = run(files, fixed_run, log=lines.append, train__save_steps=1)
    assert any(line.startswith("[online] round 2 is redone") for line in lines)
    assert any(line.startswith("[resume] from") and f"checkpoint-{steps - 1}" in line for line in lines)
    assert (fixed_run / "round-2" / "final" / "model.safetensors").is_file()
    assert (fixed_run / "round-1" / "final" / "model.safetensors").stat().st_mtime_ns == round1
    assert (fixed_run / "round-2" / "pairs.jsonl").read_text() == pairs
    assert [e["round"] for e in result.rounds] == [1, 2]


def test_cli_round_reference_all_pairs_pairwise_judge_and_registry(files):
    """``--ref-update round`` (round 2 trains against round 1's policy), every pair above a margin
    from a pairwise judge, and each round registered as a version with its evaluation."""
    tmp, model, prompts, held = files
    out, registry = tmp / "round-ref", tmp / "registry"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    args = ["--model", str(model), "--prompts", str(prompts), "--eval-prompts", str(held), "--judge",
            "helpers.judges:prefer_more_e", "--rounds", "2", "--samples-per-prompt", "3", "--pairing", "all",
            "--min-margin", "0.2", "--ref-update", "round", "--max-new-tokens", "10", "--lr", "1e-3",
            "--batch-size", "4", "--ref", "copy", "--max-length", "48", "--max-prompt-length", "24",
            "--no-progress", "--output", str(out), "--registry", str(registry), "--eval-num-prompts", "4"]
    r = subprocess.run([sys.executable, "-m", "dpokit.cli", "online", *args], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "round 2: win rate" in r.stdout
    import yaml

    second = yaml.safe_load((out / "round-2" / "config.yaml").read_text())
    assert second["model"]["path"] == str(out / "round-1" / "final") and second["model"]["ref_path"] is None
    report = json.loads((out / "online_report.json").read_text())["rounds"]
    assert report[1]["reference"] == str(out / "round-1" / "final")
    for e in report:
        cands = read_jsonl(out / f"round-{e['round']}" / "candidates.jsonl")
        expected = sum(len(pair_indices(c["scores"], [0, 1, 2], "all", 0.2)) for c in cands)
        assert e["pairs"] == expected == len(read_jsonl(out / f"round-{e['round']}" / "pairs.jsonl"))
        assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for c in cands for s in c["scores"])  # round-robin means
        record = Registry(registry).get(e["version"])
        assert record["model"] == e["model"] and record["eval"]["report"]["win_rate"] == e["win_rate"]


def test_cli_bad_input_exits_2(files):
    tmp, model, prompts, _ = files
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    for extra, expect in ((["--samples-per-prompt", "1"], "online.samples_per_prompt"),
                          (["--temperature", "0"], "online.temperature"), (["--judge", "nope"], "package.module:function")):
        args = ["--model", str(model), "--prompts", str(prompts), "--judge", "helpers.judges:count_e",
                "--output", str(tmp / "bad"), *extra]
        r = subprocess.run([sys.executable, "-m", "dpokit.cli", "online", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr and expect in r.stderr, r.stderr


@pytest.mark.parametrize("override, field", [({"data.train": "x.jsonl"}, "data.train"),
                                             ({"online.rounds": 0}, "online.rounds"),
                                             ({"online.top_p": 0.0}, "online.top_p"),
                                             ({"train.lr": -1.0}, "train.lr")])
def test_config_rejects(files, override, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        load_config(None, {**settings(files, files[0] / "x"), **override}, root=OnlineConfig)


def test_any_loss_trains_on_round_pairs(files):
    """Pairs become what the loss takes (data/kinds.py), so unpaired losses validate too; listwise
    losses take the ranked lists of ``--pairing list`` (tests/test_online_lists.py)."""
    for loss, pairing in (("kto", "best-worst"), ("lipo", "list"), ("ipo", "all")):
        cfg = load_config(None, {**settings(files, files[0] / "x"), "loss.name": loss, "online.pairing": pairing},
                          root=OnlineConfig)
        assert cfg.round_config(2, "m", None, "p.jsonl", "o").loss.name == loss


def test_pairing_rules_and_counts():
    scores = [3.0, 1.0, 3.0, 2.0]
    assert pair_indices(scores, [0, 1, 2, 3], "best-worst", 0.0) == [(0, 1)]
    assert pair_indices(scores, [0, 1, 2, 3], "best-worst", 2.0) == []
    assert sorted(pair_indices(scores, [0, 1, 2, 3], "all", 0.5)) == [(0, 1), (0, 3), (2, 1), (2, 3), (3, 1)]
    items = [Candidates("p", ["a", "", "b", "c"], [1.0, 9.0, 3.0, 2.0]), Candidates("q", ["x", "y"], [1.0, 1.0])]
    records, stats = form_pairs(items, "best-worst", 0.0)
    assert [(r["chosen"], r["rejected"]) for r in records] == [("b", "a")]  # the empty answer is never paired
    assert (stats.candidates, stats.empty, stats.pairs, stats.discarded, stats.prompts_without_pair) == (6, 1, 1, 4, 1)


def test_pairwise_judge_is_asked_both_orders_and_cached(tmp_path):
    biased = CandidateJudge("helpers.judges:always_first", tmp_path / "a.json")
    assert biased.scores("p", ["e", "ee", "x"]) == [0.5, 0.5, 0.5]  # pure position bias cancels out
    judge = CandidateJudge("helpers.judges:prefer_more_e", tmp_path / "b.json")
    assert judge.scores("p", ["e", "ee", "x"]) == [0.5, 1.0, 0.0]
    assert judge.cache.misses == 6
    judge.cache.save()
    again = CandidateJudge("helpers.judges:prefer_more_e", tmp_path / "b.json")
    assert again.scores("p", ["e", "ee", "x"]) == [0.5, 1.0, 0.0] and again.cache.hits == 6


def test_pair_budget_keeps_the_fewest_prompts_in_order():
    from dpokit.online.loop import within_pair_budget

    items = [Candidates(p, ["a", "b", "c"], s) for p, s in
             (("p", [1.0, 1.0, 1.0]), ("q", [2.0, 1.0, 0.0]), ("r", [0.0, 1.0, 1.0]), ("s", [3.0, 0.0, 1.0]))]
    assert [it.prompt for it in within_pair_budget(items, "best-worst", 0.0, 0, 2)] == ["p", "q", "r"]
    unlimited, enough = (within_pair_budget(items, "best-worst", 0.0, 0, n) for n in (0, 9))
    assert unlimited == items == enough
    # with --pairing all, a prompt's pairs stay together: q alone gives 3 pairs for a budget of 2
    assert [it.prompt for it in within_pair_budget(items, "all", 0.0, 0, 2)] == ["p", "q"]


def test_sample_from_initial_and_pair_budget(files):
    """The control of docs/online.md: round 2 trains on from round 1's policy but samples the initial
    model; ``max_pairs`` keeps the fewest prompts that give that many pairs."""
    import yaml

    out = files[0] / "initial-sampler"
    result = run(files, out, online__sample_from="initial", online__max_pairs=3)
    second = json.loads((out / "round-2" / "sampling.json").read_text())
    assert second["policy"] == str(files[1]) and second["prompts_sampled"] == 8
    trained_from = yaml.safe_load((out / "round-2" / "config.yaml").read_text())["model"]["path"]
    assert trained_from == str(out / "round-1" / "final")
    for e in result.rounds:
        cands = read_jsonl(out / f"round-{e['round']}" / "candidates.jsonl")
        assert e["pairs"] == 3 == sum(c["pairs"] for c in cands) and e["prompts"] == len(cands) < 8
        assert cands[-1]["pairs"] == 1  # the last prompt kept is the one that reached the budget
