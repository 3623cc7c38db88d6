"""``dpokit data check | stats | convert`` through the real CLI entry point."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.data import jsonl, run
from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.data import read_records
from dpokit.errors import UserError
from dpokit.data.commands import report_paths
from helpers import tiny_model_dir

GOOD = {"prompt": "P", "chosen": " a", "rejected": " b"}
RATED = [{"prompt": f"Q{i}", "responses": ["ok", "best", "worst"], "scores": [5, 9, 1]} for i in range(3)]


def lines_of(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_check_valid_file(tmp_path, capsys):
    path = jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "prompt": "Q"}])
    assert main(["data", "check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{path}: format pairs; 2 input records, 0 invalid",
                                                    "after cleaning: 2 pair left for training, 0 dropped"]


def test_check_runs_the_cleaning_training_runs(tmp_path, capsys):
    """What check says is left is what training reads: same count, each drop named with its reason."""
    rows = [GOOD, GOOD, {**GOOD, "prompt": "Q"}, {"prompt": "R", "chosen": " ", "rejected": " b"},
            {"prompt": "S", "chosen": "same", "rejected": "Same "}]
    path = jsonl(tmp_path / "d.jsonl", rows)
    assert main(["data", "check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: format pairs; 5 input records, 0 invalid",
        "after cleaning: 2 pair left for training, 3 dropped",
        "  dropped 1: duplicate (exact)",
        "  dropped 1: empty answer",
        "  dropped 1: identical answers (chosen == rejected after whitespace/case normalisation)"]
    assert len(read_records(path, "pair", DataConfig())) == 2  # what the trainers read


def test_check_exits_2_when_cleaning_leaves_nothing(tmp_path, capsys):
    path = jsonl(tmp_path / "empty.jsonl", [{"prompt": "", "chosen": "", "rejected": ""}])
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == ["after cleaning: no records left for training, 1 dropped",
                                             "  dropped 1: empty prompt"]
    assert captured.err == f"dpokit: error: {path}: no records left for training: see the reasons above\n"
    with pytest.raises(UserError, match="no records left"):  # as training stops
        read_records(path, "pair", DataConfig())


def test_check_converts_to_the_kind_training_reads(tmp_path, capsys):
    path = jsonl(tmp_path / "rated.jsonl", [*RATED, {"prompt": "R", "responses": ["x", "y"], "scores": [2, 2]}])
    assert main(["data", "check", str(path)]) == 0
    assert "after cleaning: 4 list left for training, 0 dropped" in capsys.readouterr().out
    assert main(["data", "check", str(path), "--to", "pairs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["after cleaning: 3 pair left for training, 1 dropped",
                       "  dropped 1: no pair: no two answers' scores differ by more than 0"]


def test_check_prints_the_first_errors_with_lines_and_exits_2(tmp_path, capsys):
    rows = [json.dumps(GOOD)] + ['{"prompt": "P", "chosen": 1, "rejected": " b"}'] * 12 + ["{oops"]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    assert main(["data", "check", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: format pairs; 14 input records, 13 invalid"
    assert out[1] == f"{path}:2: field 'chosen': must be a string or a non-empty list of messages; got int"
    assert [line.split(": ")[0] for line in out[1:11]] == [f"{path}:{n}" for n in range(2, 12)]
    assert out[11] == "... and 3 more"
    assert out[12] == "after cleaning: 1 pair left for training, 0 dropped"


def test_file_level_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dpokit: error: {tmp_path / 'missing.jsonl'}: file not found"
    assert main(["data", "stats", str(tmp_path / "x.jsonl"), "--columns", "prompt"]) == 2
    assert "data.columns" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "x.jsonl"), "--max-length-ratio", "0.5"]) == 2
    assert "data.max_length_ratio" in capsys.readouterr().err


def test_convert_writes_canonical_jsonl_and_reports(tmp_path, capsys):
    rows = [*RATED, RATED[0], {"prompt": "R", "responses": ["x", "y"], "scores": [2, 2]}]
    src, dst = jsonl(tmp_path / "raw.jsonl", rows), tmp_path / "pairs.jsonl"
    assert main(["data", "convert", str(src), str(dst), "--to", "pairs", "--pairing", "best-each"]) == 0
    assert lines_of(dst)[:2] == [
        {"prompt": "Q0", "chosen": "best", "rejected": "ok", "origin": f"{src}:1"},
        {"prompt": "Q0", "chosen": "best", "rejected": "worst", "origin": f"{src}:1"}]
    assert len(lines_of(dst)) == 6
    json_report, table = report_paths(dst)
    assert (json_report.name, table.name) == ("pairs.report.json", "pairs.report.txt")
    report = json.loads(json_report.read_text())
    assert report["records_out"] == 6 and report["output"] == str(dst)
    assert {(e["record"], e["reason"]) for e in report["events"]} == {
        (f"{src}:4", "duplicate (exact)"), (f"{src}:4", "duplicate (exact)"),
        (f"{src}:5", "no pair: no two answers' scores differ by more than 0")}
    assert sum(e["reason"] == "duplicate (exact)" for e in report["events"]) == 2  # both pairs of row 4
    assert f"{src}:5\tdropped\tno pair" in table.read_text()
    assert f"wrote 6 records to {dst}" in capsys.readouterr().out


@pytest.mark.parametrize("to,kind", [("pairs", "pair"), ("list", "list"), ("unpaired", "unpaired"), ("sft", "sft")])
def test_converted_files_read_back_as_the_same_records(tmp_path, to, kind):
    src, dst = jsonl(tmp_path / "raw.jsonl", RATED), tmp_path / f"out.{to}.jsonl.gz"
    assert main(["data", "convert", str(src), str(dst), "--to", to]) == 0
    direct, _ = run(src, kind)
    again, report = run(dst, kind)
    assert report.format == {"pairs": "pairs", "list": "rated", "unpaired": "unpaired", "sft": "sft"}[to]
    strip = lambda recs: [{**r.__dict__, "source": None} for r in recs]  # noqa: E731
    assert strip(again) == strip(direct)
    assert [line["origin"] for line in lines_of(dst)] == [r.source for r in direct]


def test_ties_kept_only_when_asked(tmp_path):
    rows = [{"prompt": "p", "response_a": "A", "response_b": "B", "votes": ["a", "b"]},
            {"prompt": "q", "response_a": "A", "response_b": "B", "votes": ["a"]}]
    src, dst = jsonl(tmp_path / "v.jsonl", rows), tmp_path / "out.jsonl"
    assert main(["data", "convert", str(src), str(dst), "--ties", "keep"]) == 0
    assert [line.get("tie", False) for line in lines_of(dst)] == [True, False]
    kept, _ = run(dst, "pair", ties="keep")
    assert [r.tie for r in kept] == [True, False]
    dropped, report = run(dst, "pair")
    assert [r.prompt for r in dropped] == ["q"] and report.total("dropped") == 1


def test_flags_reach_the_pipeline(tmp_path):
    path = tmp_path / "raw.csv"
    path.write_text("instruction,good,bad\nQ,same,same\nR,yes,no\n")
    dst = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(path), str(dst), "--columns", "prompt=instruction,chosen=good,rejected=bad"]) == 0
    assert [line["prompt"] for line in lines_of(dst)] == ["R"]
    assert main(["data", "convert", str(path), str(dst), "--columns", "prompt=instruction,chosen=good,rejected=bad",
                 "--no-drop-identical"]) == 0
    assert [line["prompt"] for line in lines_of(dst)] == ["Q", "R"]


def test_stats_counts_balance_and_agreement(tmp_path, capsys):
    rows = [{"prompt": "P", "completion": " x", "label": True}, {"prompt": "P", "completion": " x", "label": True},
            {"prompt": "Q", "completion": " yy", "label": True}, {"prompt": "R", "completion": " z", "label": False}]
    assert main(["data", "stats", str(jsonl(tmp_path / "u.jsonl", rows))]) == 0
    out = capsys.readouterr().out
    assert "duplicates 1, conflicting records 0" in out
    assert "labels: desirable 2 (66.7%), undesirable 1 (33.3%)" in out
    # answers " x", " yy", " z": 2, 3, 2 characters -> mean 2.3, median 2, max 3
    answer = next(line for line in out.splitlines() if line.startswith("answer"))
    assert answer.split()[1:] == ["2.3", "2.0", "3.0", "3.0"]
    votes = [{"prompt": "p", "response_a": "A", "response_b": "B", "votes": ["a", "a"]},
             {"prompt": "q", "response_a": "C", "response_b": "D", "votes": ["a", "b"]}]
    assert main(["data", "stats", str(jsonl(tmp_path / "v.jsonl", votes))]) == 0
    assert "annotator agreement: 50.0% of annotator pairs agree" in capsys.readouterr().out


def test_stats_in_tokens(tmp_path, capsys, tiny_tokenizer):
    rows = [{"prompt": "Review of the film:", "chosen": " warm and kind", "rejected": " rude"}]
    path = jsonl(tmp_path / "p.jsonl", rows)
    assert main(["data", "stats", str(path), "--tokenizer", str(tiny_model_dir(tmp_path))]) == 0
    out = capsys.readouterr().out
    prompt = next(line for line in out.splitlines() if line.startswith("prompt "))
    n = len(tiny_tokenizer("Review of the film:")["input_ids"])
    assert "lengths in tokens" in out and float(prompt.split()[1]) == n


def test_stats_compares_pair_lengths_in_the_unit_it_measures(tmp_path, capsys):
    """' the the the the' has more characters than ' xqzjvkw' (16 > 8) but fewer tiny-tokenizer
    tokens (4 < 8): with a tokenizer, the chosen answer is not the longer one."""
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "P", "chosen": " the the the the", "rejected": " xqzjvkw"}])
    assert main(["data", "stats", str(path)]) == 0
    assert "pairs (in characters): chosen longer 1 (100.0%)" in capsys.readouterr().out
    assert main(["data", "stats", str(path), "--tokenizer", str(tiny_model_dir(tmp_path))]) == 0
    assert "pairs (in tokens): chosen not longer 1 (100.0%)" in capsys.readouterr().out


def test_malformed_input_exits_2_without_traceback(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + '\n{"prompt": "P", "chosen": " a", "rejected": NaN}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "dpokit.cli", "data", "convert", str(path), str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"dpokit: error: {path}:2: invalid JSON: NaN is not valid JSON"
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_trainers_refuse_to_keep_ties(tmp_path):
    from dpokit.config import load_config
    from dpokit.errors import UserError

    with pytest.raises(UserError) as exc:
        load_config(None, {"model.path": "m", "data.train": "d.jsonl", "data.ties": "keep"})
    assert exc.value.field == "data.ties" and "convert" in str(exc.value)
