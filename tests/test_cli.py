"""The command line: an end-to-end tiny SFT -> DPO -> eval run, and exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.cli import main
from helpers import tiny_model_dir, write_pairs

TASK = Path(__file__).resolve().parents[1] / "dpokit" / "tasks" / "reviews_data"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return tmp, tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=12)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "dpokit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_sft_then_dpo_then_eval(files):
    tmp, model, data = files
    common = ["--data", str(data), "--max-length", "64", "--max-prompt-length", "32", "--batch-size", "4"]
    sft = run_cli("sft", "--model", str(model), "--output", str(tmp / "sft"), "--max-steps", "4", "--lr", "3e-3",
                  *common)
    assert sft.returncode == 0, sft.stderr
    dpo = run_cli("dpo", "--model", str(tmp / "sft" / "final"), "--output", str(tmp / "dpo"), "--max-steps", "4",
                  "--lr", "1e-3", "--ref", "precomputed", "--dpo-beta", "0.2", "--eval-data", str(data), *common)
    assert dpo.returncode == 0, dpo.stderr
    assert "eval/rewards/accuracies" in dpo.stdout
    lines = [json.loads(x) for x in (tmp / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    ev = run_cli("eval", "--model", str(tmp / "dpo" / "final"), "--ref-model", str(tmp / "sft" / "final"),
                 "--prompts", str(TASK / "prompts.jsonl"), "--num-prompts", "8", "--judge",
                 "dpokit.tasks.reviews:judge", "--pairs", str(data), "--max-new-tokens", "8",
                 "--output", str(tmp / "eval"))
    assert ev.returncode == 0, ev.stderr
    assert "win rate (policy over reference)" in ev.stdout
    report = json.loads((tmp / "eval" / "eval_report.json").read_text())
    assert report["prompts"] == 8 and report["wins"] + report["ties"] + report["losses"] == 8
    assert 0 <= report["win_rate"] <= 1 and report["pairs"] == 12
    assert len((tmp / "eval" / "samples.jsonl").read_text().splitlines()) == 8


def test_bad_input_subprocess_has_no_traceback(files):
    tmp, model, _ = files
    r = run_cli("dpo", "--model", str(model), "--data", str(tmp / "missing.jsonl"), "--output", str(tmp / "x"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "missing.jsonl" in r.stderr and "file not found" in r.stderr


def _expect_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_malformed_record(files, capsys):
    tmp, model, data = files
    bad = tmp / "bad.jsonl"
    lines = data.read_text().splitlines()
    lines[2] = '{"prompt": "hi", "chosen": 3, "rejected": "x"}'
    bad.write_text("\n".join(lines) + "\n")
    _expect_error(capsys, ["dpo", "--model", str(model), "--data", str(bad), "--output", str(tmp / "o")],
                  "bad.jsonl:3", "chosen")


def test_invalid_json_line(files, capsys):
    tmp, model, data = files
    bad = tmp / "broken.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n{not json\n")
    _expect_error(capsys, ["dpo", "--model", str(model), "--data", str(bad), "--output", str(tmp / "o")],
                  "broken.jsonl:2", "invalid JSON")


def test_unknown_config_key(files, capsys):
    tmp, model, data = files
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"model:\n  path: {model}\ndata:\n  train: {data}\ntrain:\n  learning_rate: 0.1\n")
    _expect_error(capsys, ["dpo", "--config", str(cfg)], "cfg.yaml", "train.learning_rate", "unknown key")


def test_wrong_type_in_config(files, capsys):
    tmp, model, data = files
    cfg = tmp / "cfg2.yaml"
    cfg.write_text(f"model:\n  path: {model}\ndata:\n  train: {data}\ntrain:\n  batch_size: four\n")
    _expect_error(capsys, ["dpo", "--config", str(cfg)], "cfg2.yaml", "train.batch_size", "must be int")


@pytest.mark.parametrize("argv_tail, needles", [
    (["--loss", "nope"], ("loss.name", "unknown loss")),
    (["--ref", "adapter"], ("train.ref", "LoRA")),
    (["--max-prompt-length", "600"], ("data.max_prompt_length",)),
    (["--dpo-beta", "0"], ("loss.beta",)),
])
def test_bad_settings(files, capsys, argv_tail, needles):
    tmp, model, data = files
    _expect_error(capsys, ["dpo", "--model", str(model), "--data", str(data), "--output", str(tmp / "o"),
                           *argv_tail], *needles)


def test_missing_model(files, capsys):
    tmp, _, data = files
    _expect_error(capsys, ["dpo", "--model", str(tmp / "no-model"), "--data", str(data), "--output",
                           str(tmp / "o")], "no-model", "model folder not found")


def test_bad_judge(files, capsys):
    tmp, model, data = files
    _expect_error(capsys, ["eval", "--model", str(model), "--ref-model", str(model), "--prompts", str(data),
                           "--judge", "dpokit.tasks.reviews:nothing_here"], "--judge", "cannot import")


@pytest.mark.parametrize("argv, line", [
    (["dpo", "--max-steps", "notanumber"],
     "--max-steps: expected an integer, got 'notanumber' (see dpokit dpo --help)"),
    (["dpo", "--lr", "fast"], "--lr: expected a number, got 'fast' (see dpokit dpo --help)"),
    (["dpo", "--max-stepz", "3"], "--max-stepz: unknown flag; did you mean --max-steps? (see dpokit dpo --help)"),
    (["dpo", "--wibble=3"], "--wibble: unknown flag (see dpokit dpo --help)"),
    (["data", "check", "a.jsonl", "b.jsonl"], "unexpected argument 'b.jsonl' (see dpokit data check --help)"),
    (["dpo", "--optimizer", "adamm"], "--optimizer: invalid choice 'adamm' (choose from adamw, sgd, rmsprop); "
                                      "did you mean adamw? (see dpokit dpo --help)"),
    (["dpx"], "unknown command 'dpx' (choose from sft, dpo, online, sweep, update, federated, eval, versions, "
              "quickstart, losses, data, label, report, rank); did you mean dpo? (see dpokit --help)"),
    (["data", "convert", "in.jsonl"], "missing required argument: output (see dpokit data convert --help)"),
    (["versions"], "missing the command: one of list, show, promote, rollback, diff, check, watch "
                   "(see dpokit versions --help)"),
    (["rank"], "missing the command: one of simulate, records, eval, update, check, watch (see dpokit rank --help)"),
    (["eval", "--max-new-tokens"], "--max-new-tokens: expected one argument (see dpokit eval --help)"),
])
def test_argparse_errors_are_one_line(capsys, argv, line):
    """Unknown flags, bad choices, wrong types and missing arguments: one line, exit code 2, no usage block."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"dpokit: error: {line}\n" and captured.out == ""


def test_help_is_still_the_full_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dpo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dpokit dpo") and "--max-steps" in out and "--dpo-beta" in out


def test_losses_command(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid" in out and "sft" in out


def test_quickstart_tiny(tmp_path, capsys):
    """The quickstart pipeline end to end on a tiny model: SFT, DPO, eval, and a table with one
    column per stage, so that what DPO adds over SFT is shown on its own."""
    assert main(["quickstart", "--tiny", "--output", str(tmp_path / "qs")]) == 0
    out = capsys.readouterr().out
    assert "judge win rate vs base" in out and "judge win rate vs SFT" in out and "sampled KL to SFT" in out
    assert "SFT → DPO" in out
    report = json.loads((tmp_path / "qs" / "eval" / "eval_report.json").read_text())
    assert report["prompts"] == 64
    assert report["dpo_vs_sft"]["pairs"] == 64
    samples = [json.loads(x) for x in (tmp_path / "qs" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 64 and all(s.keys() >= {"base", "sft", "dpo"} for s in samples)
    for key in ("sft_vs_base", "dpo_vs_base", "dpo_vs_sft"):
        r = report[key]
        assert 0 <= r["win_rate"] <= 1 and r["wins"] + r["ties"] + r["losses"] == 64
        assert r["win_rate_ci95"][0] <= r["win_rate"] <= r["win_rate_ci95"][1]
    assert (tmp_path / "qs" / "dpo" / "final" / "model.safetensors").is_file()
    # the report of a quickstart folder: both stages as runs, the comparison of the three models
    assert main(["report", str(tmp_path / "qs"), "-o", str(tmp_path / "qs.html")]) == 0
    html = (tmp_path / "qs.html").read_text()
    assert '<a href="#run-0">qs/sft</a>' in html and '<a href="#run-1">qs/dpo</a>' in html
    assert ">qs/eval: dpo_vs_sft<" in html and "<h4>held-out samples (64)</h4>" in html
    assert f'<td class="num">{report["dpo_vs_sft"]["kl_sampled"]:.6g}</td>' in html
