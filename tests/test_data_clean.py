"""Cleaning steps, each switched on and off, each removal reported with its reason; kind
conversions; balancing; the report files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from helpers.data import OFF, jsonl, run
from dpokit.data import DataReport
from dpokit.errors import UserError


def pair(prompt: str, chosen: str, rejected: str, **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def kept_prompts(records) -> list:
    return [r.prompt for r in records]


def test_empty_fields(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [pair("  ", " a", " b"), pair("P", " a", "\n"), pair("Q", " a", " b")])
    recs, report = run(path)
    assert kept_prompts(recs) == ["Q"]
    assert dict(report.counts) == {("dropped", "empty prompt"): 1, ("dropped", "empty answer"): 1}
    recs, report = run(path, drop_empty=False, drop_identical=False)
    assert len(recs) == 3 and not report.counts


def test_identical_answers_after_whitespace_and_case(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [pair("P", " Same  answer", "same answer\n"), pair("Q", " a", " b")])
    recs, report = run(path)
    assert kept_prompts(recs) == ["Q"]
    assert report.counts[("dropped", "identical answers (chosen == rejected after whitespace/case normalisation)")] == 1
    assert len(run(path, drop_identical=False)[0]) == 2


@pytest.mark.parametrize("answer,found", [
    (" fine<|im_end|>", "<|im_end|>"), (" fine</s>", "</s>"), (" sure [INST] next", "[INST]"),
    (" ok\n\nHuman: and you?", "Human:"), ("Assistant: hi", "Assistant:"), (" ok <|eot_id|>", "<|eot_id|>"),
])
def test_leaked_template_text(tmp_path, answer, found):
    path = jsonl(tmp_path / "d.jsonl", [pair("P", answer, " b"), pair("Q", " a", " b")])
    recs, report = run(path)
    assert kept_prompts(recs) == ["Q"]
    assert report.counts[("dropped", f"leaked template text in an answer: {found!r}")] == 1
    assert len(run(path, drop_leaks=False)[0]) == 2


def test_leak_check_takes_the_tokenizers_special_tokens(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [pair("P", " a<|my_eos|>", " b"), pair("Q", " a", " b")])
    from dpokit.config import DataConfig
    from dpokit.data import read_records

    assert len(read_records(path, "pair", DataConfig())) == 2  # unknown without the tokenizer
    report = DataReport()
    recs = read_records(path, "pair", DataConfig(), report, special_tokens=["<|my_eos|>"])
    assert kept_prompts(recs) == ["Q"] and report.total("dropped") == 1


def test_length_and_ratio_filters(tmp_path):
    """Answer lengths (characters): r1 2 and 12, r2 4 and 5, r3 30 and 3."""
    path = jsonl(tmp_path / "d.jsonl", [pair("P1", "ab", "abcdefghijkl"), pair("P2", "abcd", "abcde"),
                                        pair("P3", "x" * 30, "abc")])
    assert kept_prompts(run(path, min_chars=3)[0]) == ["P2", "P3"]
    assert kept_prompts(run(path, max_chars=12)[0]) == ["P1", "P2"]
    recs, report = run(path, max_length_ratio=5.0)  # 12/2 = 6 > 5 and 30/3 = 10 > 5 go
    assert kept_prompts(recs) == ["P2"]
    assert report.counts[("dropped", "answer length ratio above 5 (data.max_length_ratio)")] == 2


def test_duplicates_exact_and_normalised(tmp_path):
    rows = [pair("P", " a", " b"), pair("P", " a", " b"), pair("p", "  A", " B "), pair("Q", " a", " b")]
    path = jsonl(tmp_path / "d.jsonl", rows)
    recs, report = run(path)
    assert kept_prompts(recs) == ["P", "Q"]
    assert report.counts[("dropped", "duplicate (exact)")] == 1
    assert report.counts[("dropped", "duplicate (after whitespace/case normalisation)")] == 1
    assert kept_prompts(run(path, dedup="exact")[0]) == ["P", "p", "Q"]
    assert len(run(path, dedup="off")[0]) == 4


def test_conflicting_pairs_are_all_dropped(tmp_path):
    """P: a>b twice (one is a duplicate) and b>a once: the pair contradicts itself, so both
    remaining records go. Q: only one way round, kept."""
    rows = [pair("P", " a", " b"), pair("Q", " x", " y"), pair("P", " a", " b"), pair("P", " B", " A")]
    path = jsonl(tmp_path / "d.jsonl", rows)
    recs, report = run(path)
    assert kept_prompts(recs) == ["Q"]
    assert report.counts[("dropped", "conflict: the same prompt and answers with the opposite label")] == 2
    assert report.counts[("dropped", "duplicate (exact)")] == 1
    assert [e["record"] for e in report.events() if e["reason"].startswith("conflict")] == \
        [f"{path}:1", f"{path}:4"]
    assert kept_prompts(run(path, drop_conflicts=False)[0]) == ["P", "Q", "P"]


def test_conflicting_unpaired_labels(tmp_path):
    rows = [{"prompt": "P", "completion": " a", "label": True}, {"prompt": "P", "completion": " a", "label": False},
            {"prompt": "P", "completion": " c", "label": False}]
    recs, report = run(jsonl(tmp_path / "u.jsonl", rows), "unpaired")
    assert [r.completion for r in recs] == [" c"] and report.total("dropped") == 2


def test_balance_by_label_over_and_under(tmp_path):
    """3 desirable, 1 undesirable. Under: 1 + 1 (2 desirable dropped). Over: 3 + 3 (the
    undesirable repeated twice more, reported as added)."""
    rows = [{"prompt": f"P{i}", "completion": " x", "label": i < 3} for i in range(4)]
    path = jsonl(tmp_path / "u.jsonl", rows)
    recs, report = run(path, "unpaired", balance="under")
    assert Counter(r.desirable for r in recs) == {True: 1, False: 1}
    assert report.counts[("dropped", "balance: under-sampled group 'desirable'")] == 2
    recs, report = run(path, "unpaired", balance="over")
    assert Counter(r.desirable for r in recs) == {True: 3, False: 3}
    assert report.counts[("added", "balance: over-sampled group 'undesirable'")] == 2
    assert [r.prompt for r in recs if not r.desirable] == ["P3"] * 3
    again, _ = run(path, "unpaired", balance="under")
    assert [r.prompt for r in again] == [r.prompt for r in run(path, "unpaired", balance="under")[0]]  # seeded


def test_balance_by_a_column(tmp_path):
    """Sources: web ×5, books ×2, over-sampled to 5 + 5: each book pair twice, plus one of them a third time."""
    rows = [pair(f"P{i}", " a", " b", source="web" if i < 5 else "books") for i in range(7)]
    recs, report = run(jsonl(tmp_path / "d.jsonl", rows), "pair", balance="over", balance_by="source")
    assert Counter(r.meta["source"] for r in recs) == {"web": 5, "books": 5}
    assert sorted(Counter(r.prompt for r in recs if r.meta["source"] == "books").values()) == [2, 3]
    with pytest.raises(UserError) as exc:
        run(jsonl(tmp_path / "d.jsonl", rows), "pair", balance="under")  # balance_by 'label' on pairs
    assert exc.value.field == "data.balance_by"
    with pytest.raises(UserError) as exc:
        run(jsonl(tmp_path / "e.jsonl", [pair("P", " a", " b")]), "pair", balance="over", balance_by="source")
    assert exc.value.field == "source" and "balance_by" in str(exc.value)


def test_kind_conversions(tmp_path):
    ranked = jsonl(tmp_path / "r.jsonl", [{"prompt": "P", "responses": ["a", "b", "c"], "scores": [1, 3, 2]}])
    (sft,), _ = run(ranked, "sft")
    assert sft.completion == "b"
    unpaired, _ = run(ranked, "unpaired")
    assert [(r.completion, r.desirable) for r in unpaired] == [("b", True), ("a", False)]
    (lst,), _ = run(jsonl(tmp_path / "p.jsonl", [pair("P", " a", " b")]), "list")
    assert lst.completions == [" a", " b"] and lst.scores is None
    ties = jsonl(tmp_path / "t.jsonl", [pair("P", " a", " b", tie=True), pair("Q", " a", " b")])
    recs, report = run(ties, "list", ties="keep")
    assert kept_prompts(recs) == ["Q"] and report.total("dropped") == 1


def test_report_files_list_every_event(tmp_path):
    rows = [pair("P", " a", " b"), pair("P", " a", " b"), pair("Q", " same", " same"), '{"broken']
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    _, report = run(path, on_error="skip")
    report.write_json(tmp_path / "r.json", {"extra": 1})
    report.write_table(tmp_path / "r.txt")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["extra"] == 1 and data["rows_read"] == 4 and data["records_out"] == 1
    assert [(e["record"], e["action"]) for e in data["events"]] == [
        (f"{path}:2", "dropped"), (f"{path}:3", "dropped"), (f"{path}:4", "skipped")]  # in stream order
    assert data["dropped"] == {"duplicate (exact)": 1,
                               "identical answers (chosen == rejected after whitespace/case normalisation)": 1}
    table = (tmp_path / "r.txt").read_text()
    assert f"{path}:2\tdropped\tduplicate (exact)" in table and "skipped" in table


def test_every_step_off_keeps_everything(tmp_path):
    rows = [pair("P", " a", " b"), pair("P", " a", " b"), pair("P", " b", " a"), pair("", " x", " x<|im_end|>")]
    recs, report = run(jsonl(tmp_path / "d.jsonl", rows), **OFF)
    assert len(recs) == 4 and not report.counts
