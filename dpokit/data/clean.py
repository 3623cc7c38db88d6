"""Cleaning: each step a switch in ``DataConfig``, each removal reported with its reason.

Order: per-record checks (empty fields, identical answers, leaked template text, lengths, length
ratio; the first that fails names the reason), then duplicates, then conflicts, then balancing.
Duplicates and conflicts are found from 64-bit hashes (Python's own, within one run), so memory
stays small; conflicts and balancing need the whole stream before they can decide, so the
records wait in a temporary file (not in memory) until then.
"""

from __future__ import annotations

import pickle
import random
import re
import tempfile
from collections import Counter
from typing import Any, Callable, Iterable, Iterator

from dpokit.data.records import Pair, RankedList, Record, Text, Unpaired
from dpokit.data.report import DataReport
from dpokit.errors import UserError

TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|user|>", "<|assistant|>",
                   "<|system|>", "<|end|>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]", "</s>")
"""Special-token text of common chat templates; a tokenizer's own special tokens are added."""
ROLE_TAGS = ("Human:", "Assistant:")
"""HH-style turn markers, leaked when they open an answer or follow a blank line in it."""


def flat(text: Text) -> str:
    """One string for a text or a message list (roles kept, so role changes count)."""
    if isinstance(text, str):
        return text
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in text)


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _contents(text: Text) -> list[str]:
    return [text] if isinstance(text, str) else [m["content"] for m in text]


def chars(text: Text) -> int:
    """Length in characters of a text, or of a message list's contents."""
    return len(text) if isinstance(text, str) else sum(len(m["content"]) for m in text)


class _Views:
    """The record in hand as flat and as normalised strings (prompt first, then the answers),
    computed once for all the steps that look at it: records pass the steps one at a time."""

    def __init__(self) -> None:
        self.rec: Record | None = None
        self._flat: list[str] = []
        self._norm: list[str] | None = None

    def flat(self, rec: Record) -> list[str]:
        if rec is not self.rec:
            self.rec, self._flat, self._norm = rec, [flat(rec.prompt), *map(flat, rec.completions)], None
        return self._flat

    def norm(self, rec: Record) -> list[str]:
        texts = self.flat(rec)
        if self._norm is None:
            self._norm = list(map(normalise, texts))
        return self._norm


def _label(rec: Record) -> Any:
    """What besides the texts makes two records differ."""
    if isinstance(rec, Unpaired):
        return rec.desirable
    if isinstance(rec, RankedList):
        return tuple(rec.scores) if rec.scores is not None else None
    return rec.tie if isinstance(rec, Pair) else None


# --------------------------------------------------------------------------- per-record checks

Check = Callable[[Record], "str | None"]


def _empty(rec: Record) -> str | None:
    if not any(c.strip() for c in _contents(rec.prompt)):
        return "empty prompt"
    if any(not "".join(_contents(a)).strip() for a in rec.completions):
        return "empty answer"
    return None


def _identical_check(views: _Views) -> Check:
    def check(rec: Record) -> str | None:
        answers = views.norm(rec)[1:]
        if len(answers) > 1 and len(set(answers)) < len(answers):
            return "identical answers (chosen == rejected after whitespace/case normalisation)"
        return None
    return check


def _leak_check(extra_tokens: Iterable[str]) -> Check:
    tokens = sorted(set(TEMPLATE_TOKENS) | {t for t in extra_tokens if t and len(t) > 1}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, tokens)))  # literals only: a fast search
    blank_line_tags = tuple("\n\n" + tag for tag in ROLE_TAGS)

    def leak(content: str) -> str | None:
        if content.startswith(ROLE_TAGS):
            return content.split(":", 1)[0] + ":"
        if (tag := next((t for t in blank_line_tags if t in content), None)) is not None:
            return tag.strip()
        return found.group() if (found := pattern.search(content)) else None

    def check(rec: Record) -> str | None:
        for answer in rec.completions:
            for content in _contents(answer):
                if (text := leak(content)) is not None:
                    return f"leaked template text in an answer: {text!r}"
        return None
    return check


def _length_check(min_chars: int, max_chars: int) -> Check:
    def check(rec: Record) -> str | None:
        prompt, answers = chars(rec.prompt), [chars(a) for a in rec.completions]
        if min_chars and min(answers) < min_chars:
            return f"an answer shorter than {min_chars} characters (data.min_chars)"
        if max_chars and max(prompt, *answers) > max_chars:
            return f"prompt or answer longer than {max_chars} characters (data.max_chars)"
        return None
    return check


def _ratio_check(max_ratio: float) -> Check:
    def check(rec: Record) -> str | None:
        answers = [chars(a) for a in rec.completions]
        if len(answers) > 1 and max(answers) > max_ratio * max(min(answers), 1):
            return f"answer length ratio above {max_ratio:g} (data.max_length_ratio)"
        return None
    return check


def record_checks(options, views: _Views, special_tokens: Iterable[str] = ()) -> list[Check]:
    checks: list[Check] = []
    if options.drop_empty:
        checks.append(_empty)
    if options.drop_identical:
        checks.append(_identical_check(views))
    if options.drop_leaks:
        checks.append(_leak_check(special_tokens))
    if options.min_chars or options.max_chars:
        checks.append(_length_check(options.min_chars, options.max_chars))
    if options.max_length_ratio:
        checks.append(_ratio_check(options.max_length_ratio))
    return checks


# --------------------------------------------------------------------------- duplicates and conflicts

def _dedup(records: Iterator[Record], mode: str, views: _Views, report: DataReport) -> Iterator[Record]:
    exact: set[int] = set()
    near: set[int] = set()
    for rec in records:
        kind, label = type(rec).__name__, _label(rec)
        key = hash((kind, label, *views.flat(rec)))
        if key in exact:
            report.drop(rec.source, "duplicate (exact)")
            continue
        exact.add(key)
        if mode == "normalized":
            key = hash((kind, label, *views.norm(rec)))
            if key in near:
                report.drop(rec.source, "duplicate (after whitespace/case normalisation)")
                continue
            near.add(key)
        yield rec


def _conflict_key(rec: Record, views: _Views) -> tuple[int, int] | None:
    """(key shared by records that contradict each other, which side this record takes)."""
    if isinstance(rec, Pair) and not rec.tie:
        prompt, good, bad = views.norm(rec)
        if good != bad:
            return hash(("pair", prompt, *sorted((good, bad)))), int(good < bad)
    if isinstance(rec, Unpaired):
        return hash(("unpaired", *views.norm(rec))), int(rec.desirable)
    return None


def _spooled(records: Iterator[Record], observe: Callable[[Record], Any]) -> Iterator[tuple[Record, Any]]:
    """Pass every record to ``observe``, then yield (record, what observe returned) for them all
    again, from a temporary file."""
    with tempfile.TemporaryFile() as f:
        chunk: list[tuple[Record, Any]] = []
        for rec in records:
            chunk.append((rec, observe(rec)))
            if len(chunk) == 1000:
                pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
                chunk = []
        pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.seek(0)
        while True:
            try:
                yield from pickle.load(f)  # our own file, written just above
            except EOFError:
                return


def _drop_conflicts(records: Iterator[Record], views: _Views, report: DataReport) -> Iterator[Record]:
    """Drop every record whose prompt and answers also occur with the opposite label: which
    of the two is right cannot be told."""
    sides: dict[int, int] = {}  # key -> bit 0: seen one way round, bit 1: the other
    conflicting: set[int] | None = None

    def observe(rec: Record) -> int | None:
        if (found := _conflict_key(rec, views)) is None:
            return None
        sides[found[0]] = sides.get(found[0], 0) | (1 << found[1])
        return found[0]
    for rec, key in _spooled(records, observe):
        if conflicting is None:  # the whole stream has been seen: keep only the conflicting keys
            conflicting = {k for k, s in sides.items() if s == 3}
            sides.clear()
        if key in conflicting:
            report.drop(rec.source, "conflict: the same prompt and answers with the opposite label")
            continue
        yield rec


# --------------------------------------------------------------------------- balancing

def group_of(rec: Record, key: str) -> str:
    if key == "label":
        if not isinstance(rec, Unpaired):
            raise UserError("balancing by 'label' needs unpaired records; name an input column instead",
                            where="config", field="data.balance_by")
        return "desirable" if rec.desirable else "undesirable"
    return str(rec.meta.get(key))


def _balance(records: Iterator[Record], mode: str, key: str, report: DataReport, seed: int = 0) -> Iterator[Record]:
    """Equal counts per group: ``under`` keeps a seeded random subset of each group as large as
    the smallest group; ``over`` repeats records of each group up to the largest group (every
    record ⌊target/n⌋ times, a seeded random few once more)."""
    counts: Counter = Counter()
    plan: dict[str, tuple[int, set[int]]] = {}
    seen: Counter = Counter()

    def observe(rec: Record) -> str:
        counts[group := group_of(rec, key)] += 1
        return group
    for rec, g in _spooled(records, observe):
        if not plan:
            target = (min if mode == "under" else max)(counts.values())
            rng = random.Random(seed)
            for group, n in sorted(counts.items()):
                extra = rng.sample(range(n), target % n) if mode == "over" else rng.sample(range(n), target)
                plan[group] = (target // n if mode == "over" else 1, set(extra))
        i, (repeat, chosen) = seen[g], plan[g]
        seen[g] += 1
        copies = repeat + (i in chosen) if mode == "over" else int(i in chosen)
        if copies == 0:
            report.drop(rec.source, f"balance: under-sampled group {g!r}")
        for c in range(copies):
            if c:
                report.add(rec.source, f"balance: over-sampled group {g!r}")
            yield rec


# --------------------------------------------------------------------------- the whole cleaning

def clean(records: Iterable[Record], kind: str | None, options, report: DataReport,
          special_tokens: Iterable[str] = ()) -> Iterator[Record]:
    """The cleaning steps ``options`` (a DataConfig) switches on, lazily over ``records`` of ``kind``."""
    views = _Views()
    checks = record_checks(options, views, special_tokens)

    def passes(rec: Record) -> bool:
        for check in checks:
            if (reason := check(rec)) is not None:
                report.drop(rec.source, reason)
                return False
        return True
    stream: Iterator[Record] = filter(passes, records)
    if options.dedup != "off":
        stream = _dedup(stream, options.dedup, views, report)
    if options.drop_conflicts and kind in ("pair", "unpaired", None):  # other kinds carry no opposite label
        stream = _drop_conflicts(stream, views, report)
    if options.balance != "off":
        stream = _balance(stream, options.balance, options.balance_by, report)
    return stream
