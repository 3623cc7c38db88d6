"""Each input format -> typed records, auto-detected or forced, with column mappings; the
expected records are written out by hand from the small files each test writes."""

from __future__ import annotations

import json

import pytest

from helpers.data import OFF, assistant, jsonl, run, user
from dpokit.data import Pair, RankedList, SFTExample, Unpaired
from dpokit.data.formats import HH_DIVERGED
from dpokit.errors import UserError


def test_prompt_chosen_rejected_strings_messages_and_implicit_prompt(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": " a", "rejected": " b"},
        {"prompt": [user("Q2")], "chosen": [assistant("c")], "rejected": [assistant("d")]},
        {"chosen": "Review: good", "rejected": "Review: great"},
        {"chosen_messages": [user("hi"), assistant("yes")], "rejected_messages": [user("hi"), assistant("no")]},
    ])
    recs, report = run(path, **OFF)
    assert report.format == "pairs" and all(isinstance(r, Pair) for r in recs)
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == [
        ("Q1", " a", " b"), ([user("Q2")], [assistant("c")], [assistant("d")]), ("Review:", " good", " great"),
        ([user("hi")], [assistant("yes")], [assistant("no")])]


HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine, thanks."
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Go away."


def test_hh_transcripts_become_chat_messages(tmp_path):
    """Turns split at "\\n\\nHuman:" / "\\n\\nAssistant:", contents stripped; the shared turns are
    the prompt, the last assistant turns the answers."""
    path = jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (rec,), report = run(path, **OFF)
    assert report.format == "hh" and not report.counts
    assert rec.prompt == [user("hi"), assistant("hello"), user("how are you?")]
    assert (rec.chosen, rec.rejected) == ([assistant("Fine, thanks.")], [assistant("Go away.")])


def test_hh_sides_that_differ_before_the_last_turn_follow_the_stated_rule(tmp_path):
    """chosen: H "q" / A "x" / H "more?" / A "y"; rejected: H "q" / A "z". They differ at the
    first assistant turn, so the prompt is [H "q"] (up to the last shared Human turn) and each
    answer is the rest of its transcript verbatim, markers included; the record is counted as
    altered, and the leak check (on by default) then drops it for the marker in the answer."""
    chosen = "\n\nHuman: q\n\nAssistant: x\n\nHuman: more?\n\nAssistant: y"
    path = jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": "\n\nHuman: q\n\nAssistant: z"},
                                         {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (first, _), report = run(path, "pair", **OFF)
    assert first.prompt == [user("q")]
    assert first.chosen == [assistant("x\n\nHuman: more?\n\nAssistant: y")] and first.rejected == [assistant("z")]
    assert dict(report.counts) == {("altered", HH_DIVERGED): 1}
    assert HH_DIVERGED.startswith("hh: the two transcripts differ before the last assistant turn")
    kept, report = run(path, "pair")
    assert len(kept) == 1 and report.counts[("dropped", "leaked template text in an answer: 'Human:'")] == 1


def test_sharegpt_pairs_sft_system_and_typed_content_parts(tmp_path):
    parts = [{"type": "text", "text": "Look"}, {"type": "text", "value": "closely"}]
    path = jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}], "system": "be brief",
         "chosen": {"from": "gpt", "value": "hello"}, "rejected": {"from": "gpt", "value": "bye"}},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "chosen": "b",
         "rejected": [{"role": "assistant", "content": parts}]},
    ])
    recs, report = run(path, **OFF)
    assert report.format == "sharegpt"
    assert recs[0] == Pair([{"role": "system", "content": "be brief"}, user("hi")], [assistant("hello")],
                           [assistant("bye")], f"{path}:1")
    assert recs[1].prompt == [user("q"), assistant("a")] and recs[1].chosen == [assistant("b")]
    assert recs[1].rejected == [assistant("Look\nclosely")]  # text parts joined by a newline
    sft = jsonl(tmp_path / "sft.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                            {"from": "gpt", "value": "a"}]}])
    (ex,), _ = run(sft, "sft")
    assert isinstance(ex, SFTExample) and (ex.prompt, ex.completion) == ([user("q")], [assistant("a")])


def test_non_text_content_part_is_an_error_naming_the_part(tmp_path):
    msgs = [user("hi"), {"role": "assistant", "content": [{"type": "text", "text": "see"}, {"type": "image"}]}]
    path = jsonl(tmp_path / "m.jsonl", [{"messages": msgs}])
    with pytest.raises(UserError) as exc:
        run(path, "sft")
    assert exc.value.where == f"{path}:1" and exc.value.field == "messages[1].content[1]"
    assert "'image'" in str(exc.value)


def test_together_style(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"input": {"messages": [user("hi")]},
                                         "preferred_output": [assistant("hello")],
                                         "non_preferred_output": [assistant("go")]}])
    (rec,), report = run(path)
    assert report.format == "together"
    assert (rec.prompt, rec.chosen, rec.rejected) == ([user("hi")], [assistant("hello")], [assistant("go")])


RATED = {"prompt": "P", "responses": ["ok", "best", "worst", "good"], "scores": [5, 9, 1, 7]}
"""Best first: best 9, good 7, ok 5, worst 1."""


@pytest.mark.parametrize("pairing,margin,expected", [
    ("best-worst", 0.0, [("best", "worst")]),
    ("best-each", 0.0, [("best", "good"), ("best", "ok"), ("best", "worst")]),
    ("all", 0.0, [("best", "good"), ("best", "ok"), ("best", "worst"), ("good", "ok"), ("good", "worst"),
                  ("ok", "worst")]),
    ("all", 2.0, [("best", "ok"), ("best", "worst"), ("good", "worst"), ("ok", "worst")]),  # differences > 2
    ("best-each", 2.0, [("best", "ok"), ("best", "worst")]),
])
def test_rated_completions_to_pairs(tmp_path, pairing, margin, expected):
    path = jsonl(tmp_path / "r.jsonl", [RATED])
    recs, report = run(path, "pair", pairing=pairing, min_margin=margin)
    assert report.format == "rated"
    assert [(r.chosen, r.rejected) for r in recs] == expected and all(r.prompt == "P" for r in recs)


def test_rated_completions_as_a_list_and_ultrafeedback_objects(tmp_path):
    uf = {"instruction": "P", "completions": [{"response": "a", "overall_score": 3.5},
                                              {"response": "b", "overall_score": 8.0}]}
    path = jsonl(tmp_path / "r.jsonl", [RATED])
    (rec,), _ = run(path, "list")
    assert rec == RankedList("P", ["best", "good", "ok", "worst"], f"{path}:1", [9.0, 7.0, 5.0, 1.0])
    path = jsonl(tmp_path / "uf.jsonl", [uf])
    (rec,), _ = run(path, "list", columns="prompt=instruction")
    assert rec == RankedList("P", ["b", "a"], f"{path}:1", [8.0, 3.5])
    # the score key inside the answer objects can be mapped too
    fine = jsonl(tmp_path / "f.jsonl", [{"prompt": "P", "completions": [{"text": "a", "fine": 1},
                                                                         {"text": "b", "fine": 5}]}])
    (rec,), report = run(fine, "list", columns="score=fine")
    assert report.format == "rated" and rec.completions == ["b", "a"] and rec.scores == [5.0, 1.0]


def test_equal_scores_give_no_pair_and_are_reported(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [{"prompt": "P", "responses": ["a", "b"], "scores": [3, 3]}, RATED])
    recs, report = run(path, "pair")
    assert [(r.chosen, r.rejected) for r in recs] == [("best", "worst")]
    assert report.counts[("dropped", "no pair: no two answers' scores differ by more than 0")] == 1


def test_rankings_to_pairs_count_positions_as_scores(tmp_path):
    """k = 3 ranked answers get scores 2, 1, 0: margin 1 keeps only (first, last)."""
    path = jsonl(tmp_path / "k.jsonl", [{"prompt": "P", "ranking": ["first", "second", "third"]}])
    recs, report = run(path, "pair", pairing="all")
    assert report.format == "ranking"
    assert [(r.chosen, r.rejected) for r in recs] == [("first", "second"), ("first", "third"), ("second", "third")]
    recs, _ = run(path, "pair", pairing="all", min_margin=1.0)
    assert [(r.chosen, r.rejected) for r in recs] == [("first", "third")]
    (lst,), _ = run(path, "list")
    assert lst == RankedList("P", ["first", "second", "third"], f"{path}:1")


VOTES = [
    {"prompt": "p1", "response_a": "A1", "response_b": "B1", "votes": ["a", "a", "b"]},
    {"prompt": "p2", "response_a": "A2", "response_b": "B2", "votes": ["b", "b", "b"]},
    {"prompt": "p3", "response_a": "A3", "response_b": "B3", "votes": ["a", "b", "tie"]},
    {"prompt": "p4", "response_a": "A4", "response_b": "B4", "winner": "model_a"},
]


def test_votes_majority_unanimity_and_ties(tmp_path):
    """Majority: p1 a (2 of 3), p2 b, p3 a tie (one vote each), p4 a (one vote).
    Unanimity: p1 and p3 disagree -> dropped; p2 and p4 kept."""
    path = jsonl(tmp_path / "v.jsonl", VOTES)
    recs, report = run(path, "pair")
    assert report.format == "votes"
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == [("p1", "A1", "B1"), ("p2", "B2", "A2"),
                                                                ("p4", "A4", "B4")]
    assert report.counts[("dropped", "votes: a tie (data.ties=drop)")] == 1
    recs, report = run(path, "pair", ties="keep")
    assert [(r.prompt, r.tie) for r in recs] == [("p1", False), ("p2", False), ("p3", True), ("p4", False)]
    recs, report = run(path, "pair", votes="unanimous")
    assert [r.prompt for r in recs] == ["p2", "p4"]
    assert report.counts[("dropped", "votes: annotators disagree (data.votes=unanimous)")] == 2


def test_annotator_agreement_by_hand(tmp_path):
    """Items with ≥ 2 votes: p1 [a a b] agree 2/6 = 1/3; p2 [b b b] 1; p3 [a b tie] 0.
    Observed P̄ = (1/3 + 1 + 0) / 3 = 4/9. Category shares over those 9 votes: a 3/9, b 5/9,
    tie 1/9, so Pₑ = (9 + 25 + 1)/81 = 35/81 and κ = (4/9 − 35/81)/(1 − 35/81) = (1/81)/(46/81) = 1/46."""
    path = jsonl(tmp_path / "v.jsonl", VOTES)
    _, report = run(path, "pair")
    agreement = report.summary()["annotator_agreement"]
    assert agreement["votes"] == 10 and agreement["items_with_2+_votes"] == 3
    assert agreement["observed"] == pytest.approx(4 / 9, abs=1e-4)
    assert agreement["fleiss_kappa"] == pytest.approx(1 / 46, abs=1e-4)
    assert agreement["unanimous"] == pytest.approx(1 / 3, abs=1e-4)


@pytest.mark.parametrize("label,desirable", [(True, True), (False, False), (1, True), ("false", False),
                                             ("thumbs_up", True), ("down", False)])
def test_unpaired_labels(tmp_path, label, desirable):
    path = jsonl(tmp_path / "u.jsonl", [{"prompt": "P", "completion": " x", "label": label}])
    (rec,), report = run(path, "unpaired")
    assert report.format == "unpaired" and rec == Unpaired("P", " x", desirable, f"{path}:1")


def test_unpaired_messages_and_pairs_to_unpaired(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"messages": [user("q"), assistant("a")], "label": False}])
    (rec,), _ = run(path, "unpaired")
    assert (rec.prompt, rec.completion, rec.desirable) == ([user("q")], [assistant("a")], False)
    pairs = jsonl(tmp_path / "p.jsonl", [{"prompt": "P", "chosen": " good", "rejected": " bad"}])
    recs, _ = run(pairs, "unpaired")
    assert [(r.completion, r.desirable) for r in recs] == [(" good", True), (" bad", False)]


def test_unpaired_cannot_become_pairs(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"prompt": "P", "completion": " x", "label": True}])
    with pytest.raises(UserError) as exc:
        run(path, "pair")
    assert "cannot become pair" in str(exc.value) and exc.value.where == str(path)


def test_sft_forms(tmp_path):
    path = jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "completion": " A"},
                                        {"messages": [user("hi"), assistant("yo")]}])
    recs, report = run(path, "sft")
    assert report.format == "sft"
    assert [(r.prompt, r.completion) for r in recs] == [("Q", " A"), ([user("hi")], [assistant("yo")])]


CLICKS = {"query": "q", "items": ["i0", "i1", "i2", "i3"], "clicks": [2, 3], "dwell": [None, None, 40, 2]}


def test_clicks_skip_above(tmp_path):
    """Clicked 2 and 3, shown in order 0..3: item 2 beats 0 and 1; item 3 beats 0 and 1 (not 2,
    which was clicked too)."""
    path = jsonl(tmp_path / "c.jsonl", [CLICKS, {"query": "q2", "items": ["x", "y"], "clicks": [0]}])
    recs, report = run(path, "pair")
    assert report.format == "clicks"
    assert [(r.chosen, r.rejected, r.weight) for r in recs] == [("i2", "i0", 1.0), ("i2", "i1", 1.0),
                                                                ("i3", "i0", 1.0), ("i3", "i1", 1.0)]
    assert report.counts[("dropped", "clicks: no clicked item below an unclicked one")] == 1


def test_clicks_dwell_and_position_bias_weights(tmp_path):
    """With a 10 s minimum dwell the 2 s click on item 3 counts as a skip; item 3 is below item 2,
    so it adds nothing, and item 2 (40 s) still beats items 0 and 1. η = 1: the clicked item is at
    position 3 (1-based), weight 3^1 = 3. One true/false flag per item reads like the indices."""
    flags = {**CLICKS, "clicks": [False, False, True, True]}
    path = jsonl(tmp_path / "c.jsonl", [CLICKS, flags])
    recs, report = run(path, "pair", click_min_dwell=10.0, click_bias=1.0, dedup="off")
    assert [(r.chosen, r.rejected, r.weight) for r in recs] == [("i2", "i0", 3.0), ("i2", "i1", 3.0)] * 2
    assert report.counts[("altered", "clicks: clicks shorter than data.click_min_dwell count as skips")] == 2


def test_column_mapping_renames_fields_and_reaches_nested_ones(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"instruction": "Q", "output_a": " yes", "output_b": " no", "id": 1},
                                        {"instruction": "R", "output_a": " up", "output_b": " down", "id": 2}])
    recs, _ = run(path, "pair", columns="prompt=instruction,chosen=output_a,rejected=output_b")
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == [("Q", " yes", " no"), ("R", " up", " down")]
    nested = jsonl(tmp_path / "n.jsonl", [{"q": {"text": "Q"}, "good": " a", "bad": " b"}])
    (rec,), _ = run(nested, "pair", columns="prompt=q.text,chosen=good,rejected=bad")
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Q", " a", " b")
    with pytest.raises(UserError) as exc:
        run(path, "pair", columns="prompt=question,chosen=output_a,rejected=output_b")
    assert exc.value.where == f"{path}:1" and exc.value.field == "question" and "data.columns" in str(exc.value)


def test_forced_format_and_undetectable_records(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(UserError) as exc:
        run(path, "pair")
    assert exc.value.where == f"{path}:1" and "--format" in str(exc.value) and "text" in str(exc.value)
    hh_as_pairs = jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (rec,), report = run(hh_as_pairs, "pair", format="pairs", **OFF)
    assert report.format == "pairs" and isinstance(rec.prompt, str)  # the generic implicit-prompt rule
    assert rec.chosen == " Fine, thanks."


def test_mixed_formats_in_one_file_name_the_cause(tmp_path):
    path = jsonl(tmp_path / "mixed.jsonl", [{"prompt": "P", "chosen": " a", "rejected": " b"},
                                            {"prompt": "P", "completion": " c", "label": True}])
    with pytest.raises(UserError) as exc:
        run(path, "pair")
    msg = str(exc.value)
    assert exc.value.where == f"{path}:2" and exc.value.field == "chosen"
    assert "looks like format 'unpaired'" in msg and "'pairs'" in msg
    recs, report = run(path, "pair", on_error="skip")
    assert len(recs) == 1 and report.total("skipped") == 1


def test_weight_column_scales_each_record(tmp_path):
    path = jsonl(tmp_path / "w.jsonl", [{"prompt": "P", "chosen": " a", "rejected": " b", "weight": 2.5}])
    (rec,), _ = run(path, "pair")
    assert rec.weight == 2.5
    lists = jsonl(tmp_path / "l.jsonl", [{"prompt": "P", "ranking": ["x", "y", "z"], "weight": "0.5"}])
    recs, _ = run(lists, "pair", pairing="best-each")
    assert [(r.chosen, r.rejected, r.weight) for r in recs] == [("x", "y", 0.5), ("x", "z", 0.5)]
    negative = jsonl(tmp_path / "n.jsonl", [{"prompt": "P", "chosen": " a", "rejected": " b", "weight": -1}])
    with pytest.raises(UserError) as exc:
        run(negative, "pair")
    assert exc.value.field == "weight" and exc.value.where == f"{negative}:1"


def test_every_example_in_the_docs_reads(tmp_path):
    """Each JSON line of docs/data.md's examples is a record of the format it illustrates."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    examples = [line for block in re.findall(r"```json\n(.*?)```", docs, re.S) for line in block.splitlines()]
    formats = set()
    for i, line in enumerate(examples):
        recs, report = run(jsonl(tmp_path / f"e{i}.jsonl", [json.loads(line)]), None, **OFF)
        assert recs, line
        formats.add(report.format)
    assert formats == {"pairs", "hh", "sharegpt", "rated", "ranking", "votes", "unpaired", "clicks"}
