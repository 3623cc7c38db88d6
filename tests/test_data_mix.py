"""Several data sources in one run (dpokit.data.mix): specs and their errors, the mixing counts,
column mappings that need no code (joined fields, annotator columns, coded votes), and a training
run on two sources whose per-source held-out metrics add up to the overall ones under either
reference strategy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.data.mix import mix, parse_entries, parse_spec, shares
from dpokit.errors import UserError
from dpokit.train import train
from helpers import config, metrics, tiny_model_dir
from helpers.data import OFF, jsonl, run
from helpers.task import pairs


def test_specs_and_their_errors():
    a, b = parse_spec("chat.jsonl:0.6,sum.parquet:0.4", "data.train")
    assert (a.path, a.weight, b.path, b.weight, a.label) == ("chat.jsonl", 0.6, "sum.parquet", 0.4, "chat")
    assert [s.weight for s in parse_spec("x.jsonl,y.jsonl", "data.eval")] == [None, None]
    with pytest.raises(UserError, match="every source or to none"):
        parse_spec("a.jsonl:0.5,b.jsonl", "data.train")
    with pytest.raises(UserError, match="share a file name"):
        parse_spec("one/a.jsonl,two/a.jsonl", "data.eval")
    with pytest.raises(UserError, match=r"weights must be > 0"):
        parse_spec("a.jsonl:0,b.jsonl:1", "data.train")
    src = parse_entries([{"path": "a.csv", "weight": 1, "columns": "prompt=q", "pairing": "all"}])[0]
    assert src.weight == 1.0 and src.options == {"columns": "prompt=q", "pairing": "all"}
    with pytest.raises(UserError, match=r"'data.sources\[0\].max_length': unknown setting for one source"):
        parse_entries([{"path": "a.csv", "max_length": 9}])
    with pytest.raises(UserError, match=r"'data.sources\[1\]': must be a mapping with a 'path'"):
        parse_entries([{"path": "a.csv"}, {"weight": 2}])
    with pytest.raises(UserError, match=r"'data.sources\[0\].pairing': must be one of"):
        parse_entries([{"path": "a.csv", "pairing": "most"}])


def test_mixing_counts_follow_the_weights():
    parts = [list(range(100)), list(range(100, 110))]  # 110 records in all
    fractions = shares([100, 10], [0.5, 0.5], 1.0)
    out = mix(parts, fractions, seed=0)
    assert [len(p) for p in out] == [55, 55]
    assert len(set(out[0])) == 55 and set(out[1]) == set(range(100, 110))  # sampled; repeated (all kept once)
    assert out == mix(parts, fractions, seed=0) and out != mix(parts, fractions, seed=1)
    assert mix(parts, shares([100, 10], [None, None], 1.0), 0) == parts  # no weights, T = 1: concatenated
    even = shares([100, 25], [None, None], 2.0)  # sizes^(1/2) = 10 : 5
    assert even == pytest.approx([2 / 3, 1 / 3])


def test_joined_fields_annotator_columns_and_coded_votes(tmp_path):
    path = tmp_path / "votes.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "out1", "out2", "ann1", "ann2", "ann3"])
        w.writerow(["Translate", "chat", "le chat", "the cat", "1", "1", "2"])  # majority a
        w.writerow(["Say hi", "", "hello", "bye", "2", "0", "2"])  # majority b; an empty input is left out
        w.writerow(["Count", "to 3", "1 2 3", "3 2 1", "0", "0", ""])  # a tie (one annotator did not vote)
    records, report = run(path, "pair", format="votes", vote_codes="1=a,2=b,0=tie", **OFF,
                          columns="prompt=instruction+input,response_a=out1,response_b=out2,votes=ann1+ann2+ann3")
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("Translate\n\nchat", "le chat", "the cat"),
                                                                   ("Say hi", "bye", "hello")]
    assert any("a tie" in reason for (_, reason) in report.counts)
    bad = tmp_path / "bad.csv"
    bad.write_text("instruction,out1,out2,ann1\nQ,x,y,7\n")
    with pytest.raises(UserError, match=r"bad.csv:2.*'winner'.*a code of data.vote_codes \(1, 2, 0\); got '7'"):
        run(bad, "pair", format="votes", vote_codes="1=a,2=b,0=tie",
            columns="prompt=instruction,response_a=out1,response_b=out2,winner=ann1")


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    rows = pairs(48, seed=1)
    files = {"chat": jsonl(tmp / "chat.jsonl", rows[:32]), "safety": jsonl(tmp / "safety.jsonl", rows[32:]),
             "chat_eval": jsonl(tmp / "chat_eval.jsonl", pairs(12, seed=2)),
             "safety_eval": jsonl(tmp / "safety_eval.jsonl", pairs(6, seed=3))}
    return tmp, tiny_model_dir(tmp), files


@pytest.mark.parametrize("ref", ["copy", "precomputed"])
def test_two_sources_train_with_per_source_counts_and_metrics(two_sources, ref):
    tmp, model, f = two_sources
    out = tmp / f"run-{ref}"
    train(config(model, f["chat"], out, data__train=f"{f['chat']}:0.5,{f['safety']}:0.5", train__ref=ref,
                 data__eval=f"{f['chat_eval']},{f['safety_eval']}", train__max_steps=4))
    mixed = json.loads((out / "data_sources_train.json").read_text())
    assert [(s["label"], s["records"], s["in_mix"]) for s in mixed] == [("chat", 32, 24), ("safety", 16, 24)]
    last = [m for m in metrics(out) if "eval/rewards/accuracies" in m][-1]
    parts = {k: last[f"eval/{k}/rewards/accuracies"] for k in ("chat_eval", "safety_eval")}
    assert last["eval/rewards/accuracies"] == pytest.approx((12 * parts["chat_eval"] + 6 * parts["safety_eval"]) / 18)
    assert last["eval/loss"] == pytest.approx((12 * last["eval/chat_eval/loss"] + 6 * last["eval/safety_eval/loss"]) / 18)
    (tmp / f"last-{ref}.json").write_text(json.dumps(last))
    if ref == "precomputed":  # the cached reference looks values up by index: each source's subset still matches
        copy = json.loads((tmp / "last-copy.json").read_text())
        assert {k: v for k, v in last.items() if k.startswith("eval/")} == pytest.approx(
            {k: v for k, v in copy.items() if k.startswith("eval/")}, rel=1e-4, abs=1e-5)


def test_yaml_sources_with_their_own_settings(two_sources, capsys):
    tmp, model, f = two_sources
    alpaca = jsonl(tmp / "alpaca.jsonl", [{"instruction": r["prompt"], "input": "", "good": r["chosen"],
                                          "bad": r["rejected"]} for r in pairs(16, seed=4)])
    cfg = {"model": {"path": str(model)}, "train": {"output": str(tmp / "yaml-run"), "max_steps": 2, "progress": False,
                                                 "batch_size": 4},
           "data": {"max_length": 64, "max_prompt_length": 32, "sources": [
               {"path": str(f["chat"]), "weight": 3},
               {"path": str(alpaca), "weight": 1, "columns": "prompt=instruction+input,chosen=good,rejected=bad"}]}}
    path = tmp / "sources.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["dpo", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "source chat: 32 records -> 36 in the mix (weight 3)" in out
    assert "source alpaca: 16 records -> 12 in the mix (weight 1)" in out
    assert (tmp / "yaml-run" / "data_report_train-alpaca.json").is_file()
    both = tmp / "both.yaml"
    both.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "train": str(f["chat"])}}))
    assert main(["dpo", "--config", str(both)]) == 2
    assert "'data.sources': give the training data as data.train or as data.sources" in capsys.readouterr().err


def test_eval_reports_each_pair_file(two_sources, capsys):
    tmp, model, f = two_sources
    prompts = jsonl(tmp / "prompts.jsonl", [{"prompt": r["prompt"]} for r in pairs(4, seed=5)])
    trained = tmp / "trained"
    train(config(model, f["chat"], trained, train__max_steps=4))  # a policy unlike its reference: losses differ
    assert main(["eval", "--model", str(trained / "final"), "--ref-model", str(model), "--prompts", str(prompts),
                 "--judge", "dpokit.tasks.drift:more_e", "--max-new-tokens", "4", "--beta", "0.1",
                 "--pairs", f"{f['chat_eval']},{f['safety_eval']}", "--output", str(tmp / "eval"), "--registry", ""]) == 0
    report = json.loads((tmp / "eval" / "eval_report.json").read_text())
    parts = report["by_source"]
    assert report["pairs"] == 18 and (parts["chat_eval"]["pairs"], parts["safety_eval"]["pairs"]) == (12, 6)
    assert parts["chat_eval"]["dpo_loss"] != pytest.approx(parts["safety_eval"]["dpo_loss"])
    assert report["dpo_loss"] == pytest.approx((12 * parts["chat_eval"]["dpo_loss"] + 6 * parts["safety_eval"]["dpo_loss"]) / 18)
    assert "  safety_eval: 6 pairs, reward accuracy" in capsys.readouterr().out
