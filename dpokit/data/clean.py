"""Cleaning: each step a switch in ``DataConfig``, each removal reported with its reason.

Order: per-record checks (empty fields, identical answers, leaked template text, lengths, length
ratio; the first that fails names the reason), then duplicates, then conflicts, then balancing.
Duplicates and conflicts are found from 8-byte digests, so memory stays small; conflicts and
balancing need the whole stream before they can decide, so the records wait in a temporary
file (not in memory) until then.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import re
import tempfile
from collections import Counter
from typing import Callable, Iterable, Iterator

from dpokit.data.records import Pair, RankedList, Record, Text, Unpaired
from dpokit.data.report import DataReport
from dpokit.errors import UserError

TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|user|>", "<|assistant|>",
                   "<|system|>", "<|end|>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]", "</s>")
"""Special-token text of common chat templates; a tokenizer's own special tokens are added."""
ROLE_TAGS = r"(?:^|\n\n)(?:Human|Assistant):"
"""HH-style turn markers: at the start of an answer or after a blank line."""


def flat(text: Text) -> str:
    """One string for a text or a message list (roles kept, so role changes count)."""
    if isinstance(text, str):
        return text
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in text)


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def digest(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(), "little")


def _contents(text: Text) -> list[str]:
    return [text] if isinstance(text, str) else [m["content"] for m in text]


def _answers(rec: Record) -> list[Text]:
    return rec.completions


# --------------------------------------------------------------------------- per-record checks

Check = Callable[[Record], "str | None"]


def _empty(rec: Record) -> str | None:
    if not any(c.strip() for c in _contents(rec.prompt)):
        return "empty prompt"
    if any(not "".join(_contents(a)).strip() for a in _answers(rec)):
        return "empty answer"
    return None


def _identical(rec: Record) -> str | None:
    answers = [normalise(flat(a)) for a in _answers(rec)]
    if len(answers) > 1 and len(set(answers)) < len(answers):
        return "identical answers (chosen == rejected after whitespace/case normalisation)"
    return None


def _leak_check(extra_tokens: Iterable[str]) -> Check:
    tokens = sorted(set(TEMPLATE_TOKENS) | {t for t in extra_tokens if t and len(t) > 1}, key=len, reverse=True)
    pattern = re.compile("|".join([ROLE_TAGS, *map(re.escape, tokens)]))

    def check(rec: Record) -> str | None:
        for answer in _answers(rec):
            for content in _contents(answer):
                if found := pattern.search(content):
                    return f"leaked template text in an answer: {found.group().strip()!r}"
        return None
    return check


def _length_check(min_chars: int, max_chars: int) -> Check:
    def check(rec: Record) -> str | None:
        lengths = [len(flat(a)) for a in _answers(rec)]
        if min_chars and min(lengths) < min_chars:
            return f"an answer shorter than {min_chars} characters (data.min_chars)"
        if max_chars and max([len(flat(rec.prompt)), *lengths]) > max_chars:
            return f"prompt or answer longer than {max_chars} characters (data.max_chars)"
        return None
    return check


def _ratio_check(max_ratio: float) -> Check:
    def check(rec: Record) -> str | None:
        lengths = [len(flat(a)) for a in _answers(rec)]
        if len(lengths) > 1 and max(lengths) > max_ratio * max(min(lengths), 1):
            return f"answer length ratio above {max_ratio:g} (data.max_length_ratio)"
        return None
    return check


def record_checks(options, special_tokens: Iterable[str] = ()) -> list[Check]:
    checks: list[Check] = []
    if options.drop_empty:
        checks.append(_empty)
    if options.drop_identical:
        checks.append(_identical)
    if options.drop_leaks:
        checks.append(_leak_check(special_tokens))
    if options.min_chars or options.max_chars:
        checks.append(_length_check(options.min_chars, options.max_chars))
    if options.max_length_ratio:
        checks.append(_ratio_check(options.max_length_ratio))
    return checks


# --------------------------------------------------------------------------- duplicates and conflicts

def _key_texts(rec: Record) -> list[str]:
    """What makes two records the same: kind, prompt, answers in order, labels."""
    texts = [type(rec).__name__, flat(rec.prompt), *map(flat, _answers(rec))]
    if isinstance(rec, Unpaired):
        texts.append(str(rec.desirable))
    elif isinstance(rec, RankedList) and rec.scores is not None:
        texts.append(repr(rec.scores))
    elif isinstance(rec, Pair) and rec.tie:
        texts.append("tie")
    return texts


def _dedup(records: Iterator[Record], mode: str, report: DataReport) -> Iterator[Record]:
    exact: set[int] = set()
    near: set[int] = set()
    for rec in records:
        texts = _key_texts(rec)
        key = digest(*texts)
        if key in exact:
            report.drop(rec.source, "duplicate (exact)")
            continue
        exact.add(key)
        if mode == "normalized":
            key = digest(*map(normalise, texts))
            if key in near:
                report.drop(rec.source, "duplicate (after whitespace/case normalisation)")
                continue
            near.add(key)
        yield rec


def _conflict_key(rec: Record) -> tuple[int, int] | None:
    """(key shared by records that contradict each other, which side this record takes)."""
    if isinstance(rec, Pair) and not rec.tie:
        prompt, good, bad = (normalise(flat(t)) for t in (rec.prompt, rec.chosen, rec.rejected))
        if good != bad:
            return digest("pair", prompt, *sorted((good, bad))), int(good < bad)
    if isinstance(rec, Unpaired):
        return digest("unpaired", normalise(flat(rec.prompt)), normalise(flat(rec.completion))), int(rec.desirable)
    return None


def _spooled(records: Iterator[Record], observe: Callable[[Record], None]) -> Iterator[Record]:
    """Pass every record to ``observe``, then yield them all again from a temporary file."""
    with tempfile.TemporaryFile() as f:
        chunk: list[Record] = []
        for rec in records:
            observe(rec)
            chunk.append(rec)
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


def _drop_conflicts(records: Iterator[Record], report: DataReport) -> Iterator[Record]:
    """Drop every record whose prompt and answers also occur with the opposite label: which
    of the two is right cannot be told."""
    sides: dict[int, int] = {}  # key -> bit 0: seen one way round, bit 1: the other
    conflicting: set[int] | None = None

    def observe(rec: Record) -> None:
        if (found := _conflict_key(rec)) is not None:
            sides[found[0]] = sides.get(found[0], 0) | (1 << found[1])
    for rec in _spooled(records, observe):
        if conflicting is None:  # the whole stream has been seen: keep only the conflicting keys
            conflicting = {k for k, s in sides.items() if s == 3}
            sides.clear()
        found = _conflict_key(rec)
        if found is not None and found[0] in conflicting:
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
    for rec in _spooled(records, lambda r: counts.update([group_of(r, key)])):
        if not plan:
            target = (min if mode == "under" else max)(counts.values())
            rng = random.Random(seed)
            for g, n in sorted(counts.items()):
                extra = rng.sample(range(n), target % n) if mode == "over" else rng.sample(range(n), target)
                plan[g] = (target // n if mode == "over" else 1, set(extra))
        g = group_of(rec, key)
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
    checks = record_checks(options, special_tokens)

    def passes(rec: Record) -> bool:
        for check in checks:
            if (reason := check(rec)) is not None:
                report.drop(rec.source, reason)
                return False
        return True
    stream: Iterator[Record] = filter(passes, records)
    if options.dedup != "off":
        stream = _dedup(stream, options.dedup, report)
    if options.drop_conflicts and kind in ("pair", "unpaired", None):  # other kinds carry no opposite label
        stream = _drop_conflicts(stream, report)
    if options.balance != "off":
        stream = _balance(stream, options.balance, options.balance_by, report)
    return stream
