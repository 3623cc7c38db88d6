"""What there is to label: a prompt and two answers per record, read from the files people have.

Accepted, told apart from the first record as the data pipeline tells formats apart:

- ``dpokit eval`` output (``samples.jsonl``): ``prompt`` with the ``policy`` and ``reference``
  answers; the quickstart's samples (``base``/``sft``/``dpo``) give its ``dpo`` and ``sft`` answers;
- ``dpokit online`` candidates (``round-N/candidates.jsonl``): ``prompt`` and ``answers``;
- votes files: ``response_a`` and ``response_b``;
- a list of answers (``responses``, ``completions``, ``ranking``): the first two, in file order;
- every pair format of the data pipeline (``chosen``/``rejected``, HH, ShareGPT, Together),
  parsed by its own parser: chosen first.

A candidate's id is a hash of its prompt and its two answers, so judgements find their candidate
again after a restart and several annotators' files line up in ``dpokit data merge-votes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.data.fields import list_field, present, text_field, text_value
from dpokit.data.formats import FORMATS, TEXT_KEYS, Context, detect
from dpokit.data.records import Pair, Text
from dpokit.data.report import DataReport
from dpokit.data.sources import iter_rows
from dpokit.data.votes import pair_id
from dpokit.errors import UserError

NAMED_ANSWERS = {"eval": ("policy", "reference"), "quickstart": ("dpo", "sft"), "online": None}
LIST_KEYS = ("responses", "completions", "ranking")
PAIR_FORMATS = ("pairs", "hh", "sharegpt", "together")


@dataclass(frozen=True)
class Candidate:
    """A prompt and two answers, in the order of the file (``first`` is ``response_a``)."""

    id: str
    source: str
    prompt: Text
    first: Text
    second: Text


def shape(row: dict[str, Any]) -> str | None:
    """How a record holds its two answers: a key of ``READERS``, or None."""
    keys = {k for k, v in row.items() if v is not None}
    if {"policy", "reference"} <= keys:
        return "eval"
    if {"dpo", "sft"} <= keys:
        return "quickstart"
    if "answers" in keys:
        return "online"
    if {"response_a", "response_b"} <= keys:
        return "votes"
    fmt = detect(row)
    if fmt in PAIR_FORMATS:
        return "pair"
    if keys & set(LIST_KEYS):
        return "list"
    return None


def _answer(item: Any, where: str, key: str) -> Text:
    """One answer of a list: text or messages, or an object holding its text (UltraFeedback)."""
    if isinstance(item, dict) and not ("role" in item or "from" in item):
        text_key = next((k for k in TEXT_KEYS if k in item), None)
        if text_key is None:
            raise UserError(f"an answer object needs a text ({'/'.join(TEXT_KEYS)})", where, key)
        return text_value(item[text_key], where, f"{key}.{text_key}")
    return text_value(item, where, key)


def _two_of_list(row: dict, where: str, key: str) -> tuple[Text, Text]:
    answers = list_field(row, key, where, 2)
    return _answer(answers[0], where, f"{key}[0]"), _answer(answers[1], where, f"{key}[1]")


def _read(row: dict, kind: str, where: str) -> tuple[Text, Text, Text]:
    """(prompt, first answer, second answer) of a record of shape ``kind``."""
    if kind in ("eval", "quickstart"):
        first, second = NAMED_ANSWERS[kind]
        return text_field(row, "prompt", where), text_field(row, first, where), text_field(row, second, where)
    if kind == "online":
        return (text_field(row, "prompt", where), *_two_of_list(row, where, "answers"))
    if kind == "votes":
        return tuple(text_field(row, k, where) for k in ("prompt", "response_a", "response_b"))
    if kind == "list":
        key = next((k for k in LIST_KEYS if present(row, k)), LIST_KEYS[0])
        return (text_field(row, "prompt", where), *_two_of_list(row, where, key))
    fmt = detect(row)
    pair = FORMATS[fmt](row, Context(None, DataReport()), where)[0]  # the pair parsers need no options
    if not isinstance(pair, Pair):
        raise UserError("needs two answers (chosen and rejected)", where, "rejected")
    return pair.prompt, pair.chosen, pair.rejected


def read_candidates(path: str | Path) -> list[Candidate]:
    """Every record of ``path`` as a candidate; a bad record raises a UserError naming its line
    and field, a repeated one (same prompt and answers) names the line it repeats."""
    out: list[Candidate] = []
    seen: dict[str, str] = {}
    kind = None
    for where, row in iter_rows(path):
        if kind is None:
            kind = shape(row)
            if kind is None:
                raise UserError("cannot tell where the two answers are: expected response_a/response_b, "
                                "chosen/rejected, policy/reference (dpokit eval), answers (dpokit online) or a "
                                f"list of responses; got fields {', '.join(map(str, row)) or 'none'}", where)
        prompt, first, second = _read(row, kind, where)
        cid = pair_id(prompt, first, second)
        if cid in seen:
            raise UserError(f"the same prompt and answers as {seen[cid]}: label each candidate once", where)
        seen[cid] = where
        out.append(Candidate(cid, where, prompt, first, second))
    if not out:
        raise UserError("no candidates", where=str(path))
    return out
