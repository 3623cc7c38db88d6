"""Batched tokenization gives the ids of one-text-at-a-time tokenization; the tokenized cache is
hit on a second run and missed when the data, the tokenizer or a setting changes; the trainer
runs the whole pipeline from its config."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from helpers.data import assistant, jsonl, options, user
from dpokit.data import Pair, tokenize_records
from dpokit.data.cache import load_tokenized
from dpokit.train import train
from helpers import config, tiny_model_dir

SMOLLM2 = Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit")) / "models" / "smollm2-135m-instruct"


def reference_ids(tok, rec) -> tuple[list[int], list[list[int]]]:
    """One tokenizer call per text, as the README describes the split."""
    eos = tok.eos_token_id
    if isinstance(rec.prompt, str):
        return tok(rec.prompt)["input_ids"], [tok(c, add_special_tokens=False)["input_ids"] + [eos]
                                              for c in rec.completions]
    prompt = tok(tok.apply_chat_template(rec.prompt, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    comps = []
    for c in rec.completions:
        full = tok(tok.apply_chat_template(rec.prompt + c, tokenize=False), add_special_tokens=False)["input_ids"]
        rest = full[len(prompt):]
        comps.append(rest[:len(rest) - rest[::-1].index(eos)] if eos in rest else rest + [eos])
    return prompt, comps


RECORDS = [Pair(f"Question {i}: is film {i} good?", f" Yes, film {i} is warm and kind.", " No.", f"r{i}")
           for i in range(700)] + \
          [Pair([user(f"Rate café {i}")], [assistant("Lovely.")], [assistant(f"Dull, {i}/10.")], f"c{i}")
           for i in range(40)]


def check_batched_equals_reference(tok) -> None:
    out, report = tokenize_records(RECORDS, tok, max_length=4096, max_prompt_length=2048)
    assert report.records_out == len(RECORDS)  # more than one batch of 512
    for rec, got in zip(RECORDS, out):
        assert (got.prompt_ids, got.completion_ids) == reference_ids(tok, rec)


def test_batched_tokenization_matches_one_text_at_a_time(tiny_tokenizer):
    check_batched_equals_reference(tiny_tokenizer)
    # a backend left with truncation on (by an earlier call) is not used directly: same ids
    tiny_tokenizer(["a b c"], truncation=True, max_length=2)
    assert tiny_tokenizer.backend_tokenizer.truncation is not None
    check_batched_equals_reference(tiny_tokenizer)


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason=f"{SMOLLM2} not converted (dpokit quickstart does it)")
def test_batched_tokenization_matches_with_smollm2():
    from transformers import AutoTokenizer

    check_batched_equals_reference(AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True))


def tokenized(path, kind, tok, tmp_path, **fields):
    return load_tokenized(path, kind, tok, options(**fields), 64, 32, tmp_path / "report.json", tmp_path / "cache")


def flat(records) -> list[tuple]:
    return [(r.prompt_ids, r.completion_ids, r.source, r.labels, r.weight) for r in records]


@pytest.mark.parametrize("kind,rows", [
    ("pair", [{"prompt": f"Q{i}", "chosen": " good", "rejected": " bad", "weight": 1 + i} for i in range(5)]),
    ("unpaired", [{"prompt": f"Q{i}", "completion": " ok", "label": i % 2 == 0} for i in range(5)]),
    ("list", [{"prompt": f"Q{i}", "responses": ["a", "b", "c"], "scores": [0.1, 7.3, 2]} for i in range(5)]),
])
def test_cache_hit_gives_the_same_records_and_report(tmp_path, tiny_tokenizer, kind, rows):
    path = jsonl(tmp_path / "d.jsonl", rows + rows[:1])  # one duplicate, reported
    first, lines, cached = tokenized(path, kind, tiny_tokenizer, tmp_path)
    report = (tmp_path / "report.json").read_text()
    (tmp_path / "report.json").unlink()
    again, lines_again, cached_again = tokenized(path, kind, tiny_tokenizer, tmp_path)
    assert (cached, cached_again) == (False, True)
    assert flat(again) == flat(first) and len(first) == 5
    assert lines_again[:-1] == lines and "cache" in lines_again[-1]
    assert (tmp_path / "report.json").read_text() == report and "duplicate (exact)" in report


def test_cache_is_missed_when_data_tokenizer_or_settings_change(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"Q{i}", "chosen": " good", "rejected": " bad"} for i in range(3)]
    path = jsonl(tmp_path / "d.jsonl", rows)
    assert tokenized(path, "pair", tiny_tokenizer, tmp_path)[2] is False
    assert tokenized(path, "pair", tiny_tokenizer, tmp_path)[2] is True
    assert tokenized(path, "pair", tiny_tokenizer, tmp_path, dedup="exact")[2] is False  # a setting
    assert tokenized(path, "sft", tiny_tokenizer, tmp_path)[2] is False  # the kind
    other = copy.deepcopy(tiny_tokenizer)
    other.chat_template = "{{ messages }}"
    assert tokenized(path, "pair", other, tmp_path)[2] is False  # the tokenizer
    jsonl(path, rows[:2])
    records, _, cached = tokenized(path, "pair", tiny_tokenizer, tmp_path)  # the data
    assert cached is False and len(records) == 2


def test_trainer_runs_the_pipeline_from_its_config(tmp_path):
    """A CSV with other column names, one duplicate and one identical pair: the trainer maps the
    columns, drops both with their reasons in data_report_train.json, trains on the rest, and a
    second run reads the tokenized data from the cache."""
    path = tmp_path / "raw.csv"
    rows = [f"Review {i}:,\" warm and kind {i}\",\" rude {i}\"" for i in range(6)]
    path.write_text("question,good,bad\n" + "\n".join(rows + [rows[0], "Review x:, same, same"]) + "\n")
    model, logs = tiny_model_dir(tmp_path), []
    cfg = config(model, path, tmp_path / "run", data__columns="prompt=question,chosen=good,rejected=bad",
                 train__max_steps=1)
    train(cfg, log=logs.append)
    report = json.loads((tmp_path / "run" / "data_report_train.json").read_text())
    assert report["format"] == "pairs" and report["records_out"] == 6
    assert [(e["record"], e["reason"]) for e in report["events"]] == [
        (f"{path}:8", "duplicate (exact)"),
        (f"{path}:9", "identical answers (chosen == rejected after whitespace/case normalisation)")]
    train(cfg, log=logs.append)
    assert any("tokenized data from the cache" in line for line in logs)
