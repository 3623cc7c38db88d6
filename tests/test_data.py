"""Tests for dpokit.data: reading records, errors that name file/line/field, chat-template
boundaries, truncation budgets and collation. Uses the real tiny tokenizer (no mocks)."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest
import torch

from dpokit.data import (Pair, SFTExample, TokenizedRecord, collate, encode, iter_json_objects, parse_pair,
                         parse_sft, read_records, tokenize_records)
from dpokit.errors import UserError
from dpokit.policies.lm.tiny import CHATML
from helpers.data import assistant, user

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def chatml(messages: list[dict]) -> str:
    """ChatML written out by hand (independent of the tokenizer's template)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def dec(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


# ============================================================================= parsing

def test_parse_string_pair_with_prompt():
    p = parse_pair({"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}, "f.jsonl:1")
    assert (p.prompt, p.chosen, p.rejected, p.source) == ("Q: 2+2?", " 4", " 5", "f.jsonl:1")
    assert p.completions == [" 4", " 5"]


def test_parse_message_list_pair():
    obj = {"prompt": [system("be nice"), user("hi")], "chosen": [assistant("hello")],
           "rejected": {"role": "assistant", "content": "go away", "name": "x"}}  # a single message dict
    p = parse_pair(obj, "f:1")
    assert p.prompt == [system("be nice"), user("hi")]
    assert p.chosen == [assistant("hello")]
    assert p.rejected == [assistant("go away")]  # extra keys dropped, single message wrapped in a list


def test_implicit_prompt_hh_style_strings():
    """HH style, the answers differ from their first word: the common prefix
    "\\n\\nHuman: hi\\n\\nAssistant: " is cut back over the trailing space, so the prompt is
    "\\n\\nHuman: hi\\n\\nAssistant:" and both completions start with that space."""
    p = parse_pair({"chosen": "\n\nHuman: hi\n\nAssistant: Sure, I am fine",
                    "rejected": "\n\nHuman: hi\n\nAssistant: No, I won't"}, "f:1")
    assert p.prompt == "\n\nHuman: hi\n\nAssistant:"
    assert (p.chosen, p.rejected) == (" Sure, I am fine", " No, I won't")


def test_implicit_prompt_split_rule_when_answers_share_words():
    """The documented rule is "split at the last whitespace before the first difference".
    "…Assistant: I am fine" vs "…Assistant: I won't" first differ at 'a'/'w', right after "I ",
    so the shared word "I" stays in the prompt: prompt "…Assistant: I", completions " am fine"
    and " won't" (the same split TRL's extract_prompt makes). A difference inside a word
    ("good" vs "great", first difference at 'o'/'r') backs off to the start of that word."""
    p = parse_pair({"chosen": "\n\nHuman: hi\n\nAssistant: I am fine",
                    "rejected": "\n\nHuman: hi\n\nAssistant: I won't"}, "f:1")
    assert (p.prompt, p.chosen, p.rejected) == ("\n\nHuman: hi\n\nAssistant: I", " am fine", " won't")
    p = parse_pair({"chosen": "Review: good", "rejected": "Review: great"}, "f:1")
    assert (p.prompt, p.chosen, p.rejected) == ("Review:", " good", " great")
    # a run of whitespace goes to the completions as a whole
    p = parse_pair({"chosen": "Q:\n\n  yes", "rejected": "Q:\n\n  no"}, "f:1")
    assert (p.prompt, p.chosen, p.rejected) == ("Q:", "\n\n  yes", "\n\n  no")
    assert p.prompt + p.chosen == "Q:\n\n  yes"


def test_implicit_prompt_message_pairs():
    conv = [system("s"), user("hi"), assistant("hey"), user("how are you?")]
    p = parse_pair({"chosen": conv + [assistant("fine")], "rejected": conv + [assistant("leave")]}, "f:1")
    assert p.prompt == conv
    assert p.chosen == [assistant("fine")] and p.rejected == [assistant("leave")]


def test_mixed_string_prompt_with_message_completions():
    p = parse_pair({"prompt": "hi", "chosen": [assistant("hello")], "rejected": [assistant("bye")]}, "f:1")
    assert p.prompt == [user("hi")]
    assert p.chosen == [assistant("hello")] and p.rejected == [assistant("bye")]
    # and the other way round: string completions under a chat prompt become assistant messages
    p = parse_pair({"prompt": [user("hi")], "chosen": "hello", "rejected": "bye"}, "f:1")
    assert p.prompt == [user("hi")] and p.chosen == [assistant("hello")] and p.rejected == [assistant("bye")]


def test_implicit_prompt_mixed_kinds_is_user_error():
    with pytest.raises(UserError) as exc:
        parse_pair({"chosen": "Q: a", "rejected": [user("Q"), assistant("b")]}, "f.jsonl:4")
    assert exc.value.where == "f.jsonl:4" and exc.value.field == "rejected"


def test_parse_sft_forms():
    e = parse_sft({"prompt": "Q", "completion": " A"}, "f:1")
    assert (e.prompt, e.completion, e.completions) == ("Q", " A", [" A"])
    e = parse_sft({"messages": [user("hi"), assistant("yo"), user("again"), assistant("hey")]}, "f:2")
    assert e.prompt == [user("hi"), assistant("yo"), user("again")] and e.completion == [assistant("hey")]
    e = parse_sft({"prompt": "Q", "chosen": " good", "rejected": " bad"}, "f:3")
    assert (e.prompt, e.completion) == ("Q", " good")
    with pytest.raises(UserError) as exc:
        parse_sft({"messages": [user("hi"), assistant("yo"), user("?")]}, "f:4")
    assert exc.value.field == "messages" and "f:4" in str(exc.value)


RECORDS = [
    {"prompt": "Q1", "chosen": " a", "rejected": " b"},
    {"prompt": [user("Q2")], "chosen": [assistant("c")], "rejected": [assistant("d")]},
    {"chosen": "Human: x\nAssistant: yes", "rejected": "Human: x\nAssistant: no"},
]
EXPECTED = [
    ("Q1", " a", " b"),
    ([user("Q2")], [assistant("c")], [assistant("d")]),
    ("Human: x\nAssistant:", " yes", " no"),
]


@pytest.mark.parametrize("name", ["data.json", "data.jsonl", "data.jsonl.gz"])
def test_read_records_formats(tmp_path, name):
    if ".jsonl" in name:
        # a blank line in the middle: line numbers still count it
        text = json.dumps(RECORDS[0]) + "\n\n" + "\n".join(json.dumps(r) for r in RECORDS[1:]) + "\n"
        wheres = ["1", "3", "4"]
    else:
        text = json.dumps(RECORDS, indent=2)
        wheres = ["record 1", "record 2", "record 3"]
    path = write(tmp_path, name, text)
    recs = read_records(path, "pair")
    assert all(isinstance(r, Pair) for r in recs)
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == EXPECTED
    assert [r.source for r in recs] == [f"{path}:{w}" for w in wheres]
    assert [w for w, _ in iter_json_objects(path)] == [f"{path}:{w}" for w in wheres]
    assert [o for _, o in iter_json_objects(path)] == RECORDS


def test_read_records_sft_kind(tmp_path):
    path = write(tmp_path, "sft.jsonl", json.dumps({"prompt": "Q", "completion": " A"}) + "\n")
    (rec,) = read_records(path, "sft")
    assert isinstance(rec, SFTExample) and (rec.prompt, rec.completion) == ("Q", " A")


# ============================================================================= errors

GOOD = json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"})


@pytest.mark.parametrize("case,name,text,where,field,words", [
    ("missing chosen", "d.jsonl", GOOD + "\n" + json.dumps({"prompt": "p", "rejected": " b"}),
     ":2", "chosen", ["missing"]),
    ("number", "d.jsonl", json.dumps({"prompt": "p", "chosen": 5, "rejected": " b"}),
     ":1", "chosen", ["int"]),
    ("no content", "d.jsonl", GOOD + "\n" + GOOD + "\n"
     + json.dumps({"prompt": [user("p")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]}),
     ":3", "chosen[0]", ["content"]),
    ("invalid json line 3", "d.jsonl", GOOD + "\n\n" + '{"prompt": "p", "chosen": " a",\n' + GOOD,
     ":3", None, ["invalid JSON"]),
    ("NaN", "d.jsonl", GOOD + "\n" + '{"prompt": "p", "chosen": " a", "rejected": " b", "score": NaN}',
     ":2", None, ["NaN"]),
    ("non-object line", "d.jsonl", GOOD + "\n" + "[1, 2]\n" + GOOD, ":2", None, ["JSON object", "list"]),
    ("non-object first line", "d.jsonl", "[1, 2]\n" + GOOD, ":1", None, ["JSON object", "list"]),
    ("gz: invalid json", "d.jsonl.gz", GOOD + "\n" + GOOD + "\n{oops}", ":3", None, ["invalid JSON"]),
    ("no shared prefix", "d.jsonl", GOOD + "\n" + json.dumps({"chosen": "yes please", "rejected": "no thanks"}),
     ":2", "chosen", ["prompt"]),
    ("array: missing rejected", "d.json", json.dumps([json.loads(GOOD), {"prompt": "p", "chosen": " a"}]),
     ":record 2", "rejected", ["missing"]),
    ("array: non-object", "d.json", json.dumps([json.loads(GOOD), json.loads(GOOD), "text"]),
     ":record 3", None, ["JSON object", "str"]),
    ("array: invalid json", "d.json", "[\n" + GOOD + ",\n" + GOOD + "\n" + GOOD + "\n]",
     ":4", None, ["invalid JSON"]),
])
def test_read_errors_name_file_line_and_field(tmp_path, case, name, text, where, field, words):
    path = write(tmp_path, name, text)
    with pytest.raises(UserError) as exc:
        read_records(path, "pair")
    err, msg = exc.value, str(exc.value)
    assert err.where == f"{path}{where}", case
    assert msg.startswith(f"{path}{where}: "), (case, msg)
    assert err.field == field, case
    if field:
        assert f"field '{field}'" in msg, case
    for w in words:
        assert w in msg, (case, msg)


@pytest.mark.parametrize("text", ["", "  \n\n \n"])
def test_empty_file_is_user_error(tmp_path, text):
    path = write(tmp_path, "d.jsonl", text)
    with pytest.raises(UserError) as exc:
        read_records(path, "pair")
    assert exc.value.where == str(path) and str(exc.value) == f"{path}: file is empty"


def test_empty_array_has_no_records(tmp_path):
    path = write(tmp_path, "d.json", "[]")
    with pytest.raises(UserError) as exc:
        read_records(path, "pair")
    assert exc.value.where == str(path) and "no records" in str(exc.value)


def test_missing_file_is_user_error(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as exc:
        read_records(path, "pair")
    assert exc.value.where == str(path) and str(path) in str(exc.value) and "not found" in str(exc.value)


def test_array_detected_by_content_for_other_extensions(tmp_path):
    """A JSON array in a file that is neither .json nor .jsonl is read as an array."""
    path = write(tmp_path, "d.txt", "\n  " + json.dumps(RECORDS, indent=1))
    recs = read_records(path, "pair")
    assert [(r.prompt, r.chosen, r.rejected) for r in recs] == EXPECTED
    assert recs[1].source == f"{path}:record 2"


def test_json_file_that_is_not_an_array(tmp_path):
    path = write(tmp_path, "d.json", GOOD)
    with pytest.raises(UserError) as exc:
        read_records(path, "pair")
    assert exc.value.where == str(path) and "array" in str(exc.value)


# ============================================================================= chat template boundaries

def check_chat_split(tok, prompt_msgs, completion_msgs):
    """encode() must split the hand-written ChatML rendering exactly:
    prompt = rendering of the prompt + "<|im_start|>assistant\\n",
    completion = the assistant content + "<|im_end|>" (the template's trailing "\\n" removed)."""
    prompt_ids, (comp_ids,) = encode(tok, prompt_msgs, [completion_msgs], "rec:1")
    assert dec(tok, prompt_ids) == chatml(prompt_msgs) + f"{IM_START}assistant\n"
    assert dec(tok, comp_ids) == completion_msgs[0]["content"] + IM_END
    assert comp_ids[-1] == tok.eos_token_id and comp_ids.count(tok.eos_token_id) == 1
    full = ids_of(tok, chatml(prompt_msgs + completion_msgs))
    assert dec(tok, full[-1:]) == "\n"
    assert prompt_ids + comp_ids == full[:-1]  # exact prefix, and nothing after <|im_end|>
    return prompt_ids, comp_ids


def test_chat_single_turn(tiny_tokenizer):
    check_chat_split(tiny_tokenizer, [user("hi there")], [assistant("Good day.")])


def test_chat_multi_turn_prompt(tiny_tokenizer):
    prompt = [user("Rate this film."), assistant("Which one?"), user("The long one.")]
    check_chat_split(tiny_tokenizer, prompt, [assistant("It was slow but fine.")])


def test_chat_system_prompt(tiny_tokenizer):
    p, _ = check_chat_split(tiny_tokenizer, [system("You are terse."), user("Hello")], [assistant("Hi.")])
    assert dec(tiny_tokenizer, p).startswith(f"{IM_START}system\nYou are terse.{IM_END}\n")


def test_chat_pair_shares_prompt_and_each_completion_ends_with_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt_ids, comps = encode(tok, [user("hi")], [[assistant("good answer")], [assistant("bad")]], "r")
    assert [dec(tok, c) for c in comps] == [f"good answer{IM_END}", f"bad{IM_END}"]
    assert all(c[-1] == tok.eos_token_id for c in comps)
    assert dec(tok, prompt_ids) == chatml([user("hi")]) + f"{IM_START}assistant\n"


def test_plain_string_records_use_no_template(tiny_tokenizer):
    """Plain strings: prompt tokenized as is (with the tokenizer's own special tokens: none
    for this tokenizer), each completion without special tokens plus EOS; still works without
    a chat template, with identical ids."""
    tok = tiny_tokenizer
    prompt, comps = "Question: is it good?", [" Yes, very.", " No."]
    expected_prompt = tok(prompt)["input_ids"]
    assert expected_prompt == ids_of(tok, prompt)  # no BOS for this tokenizer
    p_ids, c_ids = encode(tok, prompt, comps, "r")
    assert p_ids == expected_prompt
    assert c_ids == [ids_of(tok, c) + [tok.eos_token_id] for c in comps]
    assert dec(tok, p_ids) == prompt and IM_START not in dec(tok, p_ids + c_ids[0])
    assert [dec(tok, c) for c in c_ids] == [" Yes, very." + IM_END, " No." + IM_END]
    no_template = copy.deepcopy(tok)
    no_template.chat_template = None
    assert encode(no_template, prompt, comps, "r") == (p_ids, c_ids)


def test_template_without_generation_prompt_still_splits_exactly(tiny_tokenizer):
    """A ChatML template that ignores add_generation_prompt: the rendered prompt then ends at
    "<|im_end|>\\n" and the assistant header "<|im_start|>assistant\\n" becomes the start of
    the completion (so it is part of the trained tokens); the split is still an exact prefix."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHATML.split("{% if add_generation_prompt %}")[0]
    assert "add_generation_prompt" not in tok.chat_template
    prompt, comp = [user("hi there")], [assistant("Good day.")]
    p_ids, (c_ids,) = encode(tok, prompt, [comp], "r")
    assert dec(tok, p_ids) == chatml(prompt)
    assert dec(tok, c_ids) == f"{IM_START}assistant\nGood day.{IM_END}"
    assert p_ids + c_ids == ids_of(tok, chatml(prompt + comp))[:-1]
    assert c_ids[-1] == tok.eos_token_id


def test_template_that_rerenders_earlier_turns_is_refused(tiny_tokenizer):
    """A template that prints the number of messages first renders the prompt as "1<|im_start|>…"
    and the conversation as "2<|im_start|>…": the prompt is no prefix, the record is refused."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{{ messages|length }}" + CHATML
    rec = Pair([user("hi")], [assistant("a")], [assistant("b")], "train.jsonl:7")
    with pytest.raises(UserError) as exc:
        tokenize_records([rec], tok, max_length=64, max_prompt_length=32)
    assert exc.value.where == "train.jsonl:7" and exc.value.field == "prompt"
    assert "train.jsonl:7" in str(exc.value) and "field 'prompt'" in str(exc.value)
    # control: the same record goes through with the unmodified template
    out, _ = tokenize_records([rec], tiny_tokenizer, max_length=64, max_prompt_length=32)
    assert len(out) == 1


def test_chat_record_without_chat_template_is_user_error(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    rec = Pair([user("hi")], [assistant("a")], [assistant("b")], "train.jsonl:3")
    with pytest.raises(UserError) as exc:
        tokenize_records([rec], tok, max_length=64, max_prompt_length=32)
    assert exc.value.where == "train.jsonl:3" and "chat template" in str(exc.value)


def test_file_to_tokens_end_to_end(tiny_tokenizer, tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"prompt": "hi", "chosen": [assistant("yes")],
                                                  "rejected": [assistant("no")]}))
    (rec,), report = tokenize_records(read_records(path, "pair"), tiny_tokenizer, 64, 32)
    assert rec.source == f"{path}:1"
    assert dec(tiny_tokenizer, rec.prompt_ids) == chatml([user("hi")]) + f"{IM_START}assistant\n"
    assert [dec(tiny_tokenizer, c) for c in rec.completion_ids] == ["yes" + IM_END, "no" + IM_END]
    assert (report.records_in, report.records_out, report.prompts_truncated, report.completions_truncated) == \
        (1, 1, 0, 0)


# ============================================================================= truncation

def test_truncation_budgets_and_report(tiny_tokenizer):
    """max_length 12, max_prompt_length 5.
    r1: 21-token prompt → keeps its LAST 5 tokens; budget 12 − 5 = 7; completions " This movie was"
        (6 tokens + EOS = exactly 7: fits, not truncated) and " no" untouched.
    r2: short prompt (n tokens), " This movie was great fun" = 11 tokens + EOS = 12 > 12 − n
        → keeps its FIRST 12 − n tokens (EOS lost); the other completion is untouched.
    r3: nothing truncated.  Report: 3/3 kept, 1 prompt and 1 completion truncated."""
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    long_prompt, short_prompt = "The quick brown fox jumps over the lazy dog", "Hi"
    lp, sp = ids_of(tok, long_prompt), ids_of(tok, short_prompt)
    long_comp = ids_of(tok, " This movie was great fun") + [eos]
    yes, no = ids_of(tok, " yes") + [eos], ids_of(tok, " no") + [eos]
    exact = ids_of(tok, " This movie was") + [eos]
    assert len(lp) == 21 and len(sp) <= 5 and len(long_comp) == 12 and len(yes) <= 5 and len(no) <= 5
    assert len(exact) == 7
    recs = [Pair(long_prompt, " This movie was", " no", "r1"),
            Pair(short_prompt, " This movie was great fun", " no", "r2"),
            Pair(short_prompt, " yes", " no", "r3")]
    out, report = tokenize_records(recs, tok, max_length=12, max_prompt_length=5)
    assert [r.source for r in out] == ["r1", "r2", "r3"]
    assert out[0].prompt_ids == lp[-5:] and out[0].completion_ids == [exact, no]
    assert out[1].prompt_ids == sp
    assert out[1].completion_ids == [long_comp[: 12 - len(sp)], no]
    assert out[1].completion_ids[0][-1] != eos
    assert out[2].prompt_ids == sp and out[2].completion_ids == [yes, no]
    assert all(len(r.prompt_ids) + len(c) <= 12 for r in out for c in r.completion_ids)
    assert (report.records_in, report.records_out) == (3, 3)
    assert (report.prompts_truncated, report.completions_truncated) == (1, 1)
    assert not report.dropped
    assert report.lines() == ["3/3 records kept; 1 prompts and 1 completions truncated"]


def test_chat_prompt_truncation_keeps_the_assistant_header(tiny_tokenizer):
    """A long chat prompt keeps its END, i.e. the "<|im_start|>assistant\\n" generation header."""
    tok = tiny_tokenizer
    rec = Pair([user("word " * 40)], [assistant("ok")], [assistant("no")], "r")
    (out,), report = tokenize_records([rec], tok, max_length=20, max_prompt_length=8)
    assert len(out.prompt_ids) == 8 and report.prompts_truncated == 1
    assert dec(tok, out.prompt_ids).endswith(f"{IM_END}\n{IM_START}assistant\n")


def test_pairs_identical_after_truncation_are_dropped_and_counted(tiny_tokenizer):
    """max_length 8, prompt "Hi" (n ≤ 4 tokens): budget 8 − n ≤ 7 tokens, and the completions
    " This movie was great fun" / " This movie was great fun indeed" share their first 11 tokens,
    so they become identical → dropped. An already identical pair is dropped for the same reason;
    an empty prompt is dropped as "empty prompt after tokenization"; one record is kept."""
    tok = tiny_tokenizer
    assert len(ids_of(tok, "Hi")) <= 4
    recs = [Pair("Hi", " This movie was great fun", " This movie was great fun indeed", "a"),
            Pair("Hi", " same", " same", "b"),
            Pair("", " x", " y", "c"),
            Pair("Hi", " yes", " no", "d")]
    out, report = tokenize_records(recs, tok, max_length=8, max_prompt_length=4)
    assert [r.source for r in out] == ["d"]
    assert (report.records_in, report.records_out) == (4, 1)
    assert dict(report.dropped) == {"responses identical (after truncation)": 2,
                                    "empty prompt after tokenization": 1}
    lines = report.lines()
    assert lines[0].startswith("1/4 records kept")
    assert "dropped 2: responses identical (after truncation)" in lines
    assert "dropped 1: empty prompt after tokenization" in lines


def test_sft_records_are_never_dropped_as_identical(tiny_tokenizer):
    recs = [SFTExample("Hi", " This movie was great fun", "s1")]
    out, report = tokenize_records(recs, tiny_tokenizer, max_length=6, max_prompt_length=3)
    assert len(out) == 1 and report.completions_truncated == 1
    assert len(out[0].prompt_ids) + len(out[0].completion_ids[0]) == 6


# ============================================================================= collate

def test_collate_pairs_grouped_by_response_right_padded():
    """B = 2 records → rows 0, 1 = chosen of records 0, 1; rows 2, 3 = rejected of records 0, 1.
    Lengths 3+3, 1+2, 3+2, 1+5 → width 6; pad id 99 on the right."""
    recs = [TokenizedRecord([5, 6, 7], [[8, 9, 2], [10, 2]], "r0"),
            TokenizedRecord([11], [[12, 2], [13, 14, 15, 16, 2]], "r1")]
    b = collate(recs, pad_id=99)
    P = 99
    assert b["input_ids"].tolist() == [
        [5, 6, 7, 8, 9, 2],
        [11, 12, 2, P, P, P],
        [5, 6, 7, 10, 2, P],
        [11, 13, 14, 15, 16, 2],
    ]
    assert b["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert b["completion_mask"].tolist() == [
        [False, False, False, True, True, True],
        [False, True, True, False, False, False],
        [False, False, False, True, True, False],
        [False, True, True, True, True, True],
    ]
    assert b["input_ids"].dtype == torch.long and b["completion_mask"].dtype == torch.bool


def test_collate_single_response():
    b = collate([TokenizedRecord([1, 2], [[3]], "a"), TokenizedRecord([4], [[5, 6, 7]], "b")], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b["completion_mask"].tolist() == [[False, False, True, False], [False, True, True, True]]
