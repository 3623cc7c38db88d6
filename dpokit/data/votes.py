"""Votes of several annotators on the same candidates, brought together: one votes record per
candidate (a prompt and its two answers) holding every vote it got, and their agreement.

A candidate is known by a hash of its prompt and two answers (``pair_id``), the id ``dpokit label``
writes, so files of different annotators line up whatever their order; a file holding the two
answers the other way round has its a and b votes swapped to match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from dpokit.data.fields import list_field, present, require, text_field
from dpokit.data.formats import VOTE_WORDS
from dpokit.data.records import Text
from dpokit.data.report import Agreement
from dpokit.data.sources import iter_rows
from dpokit.errors import UserError

FLIPPED = {"a": "b", "b": "a"}


def pair_id(prompt: Text, a: Text, b: Text) -> str:
    """A short hash of a prompt and two answers, in this order."""
    blob = json.dumps([prompt, a, b], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def canonical_vote(word: str) -> str:
    """a, b, tie or ``tie (bothbad)``: one spelling per choice, both-bad kept apart from a plain tie
    (the votes format reads it as a tie)."""
    choice = VOTE_WORDS[word.strip().lower()]
    return "tie (bothbad)" if choice == "tie" and "bad" in word.lower() else choice


@dataclass
class Merged:
    """One candidate with the votes of every file, in the order the files were given."""

    id: str
    prompt: Text
    response_a: Text
    response_b: Text
    votes: list[str] = field(default_factory=list)
    annotators: list[str | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def row(self) -> dict:
        out = {"id": self.id, "prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b,
               "votes": self.votes}
        if any(a is not None for a in self.annotators):
            out["annotators"] = self.annotators
        return {**out, "sources": self.sources}


def _row_votes(row: dict, where: str) -> list[str]:
    key = "votes" if present(row, "votes") else "winner"
    raw = list_field(row, "votes", where, 1) if key == "votes" else [require(row, "winner", where)]
    for i, v in enumerate(raw):
        if not isinstance(v, str) or v.strip().lower() not in VOTE_WORDS:
            raise UserError(f"must be one of a, b, tie, tie (bothbad) (or model_a, model_b); got {v!r}", where,
                            f"votes[{i}]" if key == "votes" else key)
    return [canonical_vote(v) for v in raw]


def merge(paths: Iterable[str | Path]) -> dict[str, Merged]:
    """Every candidate of the files, by id, with all its votes; a bad record, or a second vote of
    one annotator on one candidate, raises a UserError naming the file, line and field."""
    merged: dict[str, Merged] = {}
    for path in paths:
        for where, row in iter_rows(path):
            prompt, a, b = (text_field(row, k, where) for k in ("prompt", "response_a", "response_b"))
            votes = _row_votes(row, where)
            annotator = row.get("annotator")
            if annotator is not None and not isinstance(annotator, str):
                raise UserError(f"must be a name (a string); got {type(annotator).__name__}", where, "annotator")
            cid, reverse = pair_id(prompt, a, b), pair_id(prompt, b, a)
            if cid not in merged and reverse in merged:  # the same candidate, answers the other way round
                cid, votes = reverse, [FLIPPED.get(v, v) for v in votes]
            item = merged.setdefault(cid, Merged(cid, prompt, a, b))
            if annotator is not None and annotator in item.annotators:
                earlier = item.sources[item.annotators.index(annotator)]
                raise UserError(f"{annotator!r} already voted on this candidate at {earlier}", where, "annotator")
            item.votes += votes
            item.annotators += [annotator] * len(votes)
            item.sources += [where] * len(votes)
    return merged


def agreement(merged: dict[str, Merged]) -> Agreement:
    """The agreement of the merged votes, computed as ``dpokit data stats`` computes it on the
    merged file (a, b and tie; both-bad counts as a tie)."""
    out = Agreement()
    for item in merged.values():
        out.add([VOTE_WORDS[v] for v in item.votes])
    return out
