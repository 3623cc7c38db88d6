"""Turning a prompt's scored candidates into preference pairs, counting what is left out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from dpokit.atomic import write_text_atomic


@dataclass
class Candidates:
    """One prompt (as given: text or chat messages) and its sampled answers with their scores."""

    prompt: object
    answers: list[str]
    scores: list[float]


@dataclass
class PairStats:
    candidates: int = 0
    """Answers sampled."""
    empty: int = 0
    """Answers that were empty after decoding (never paired)."""
    discarded: int = 0
    """Answers in no pair (empty ones included)."""
    pairs: int = 0
    """Pairs written."""
    prompts_without_pair: int = 0
    """Prompts none of whose answers differ by more than the margin."""
    per_prompt: list[int] = field(default_factory=list)


def pair_indices(scores: list[float], usable: list[int], pairing: str, margin: float) -> list[tuple[int, int]]:
    """(chosen, rejected) indices: best vs worst, or every pair whose scores differ by more than ``margin``.

    With ties for best or worst, the first of the tied answers is taken (deterministic)."""
    if len(usable) < 2:
        return []
    if pairing == "best-worst":
        best = max(usable, key=lambda i: scores[i])
        worst = min(usable, key=lambda i: scores[i])
        return [(best, worst)] if scores[best] - scores[worst] > margin else []
    out = []
    for i, j in combinations(usable, 2):
        hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
        if scores[hi] - scores[lo] > margin:
            out.append((hi, lo))
    return out


def form_pairs(items: list[Candidates], pairing: str, margin: float) -> tuple[list[dict], PairStats]:
    """Pair records (``prompt``, ``chosen``, ``rejected`` and both scores) and the counts behind them.
    Identical answers are judged once and never paired with each other (their scores are equal)."""
    records, stats = [], PairStats()
    for item in items:
        stats.candidates += len(item.answers)
        usable = [i for i, a in enumerate(item.answers) if a.strip()]
        stats.empty += len(item.answers) - len(usable)
        chosen = pair_indices(item.scores, usable, pairing, margin)
        used = {i for pair in chosen for i in pair}
        stats.discarded += len(item.answers) - len(used)
        stats.prompts_without_pair += not chosen
        stats.per_prompt.append(len(chosen))
        records += [_record(item, w, l) for w, l in chosen]
    stats.pairs = len(records)
    return records, stats


def _record(item: Candidates, w: int, l: int) -> dict:
    def message(text: str):
        return [{"role": "assistant", "content": text}] if isinstance(item.prompt, list) else text

    return {"prompt": item.prompt, "chosen": message(item.answers[w]), "rejected": message(item.answers[l]),
            "score_chosen": item.scores[w], "score_rejected": item.scores[l]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
