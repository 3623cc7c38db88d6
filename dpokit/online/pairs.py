"""Turning a prompt's scored candidates into preference pairs or ranked lists, counting what is left out.

An answer can be paired or listed only when it is *usable*: not empty, scored (its judgement did
not fail) and, with RSO sampling, accepted by the rejection sampler (``Candidates.selected``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations


@dataclass
class Candidates:
    """One prompt (as given: text or chat messages) and its sampled answers with their scores."""

    prompt: object
    answers: list[str]
    scores: list[float | None]
    """None where the judgement failed."""
    selected: list[int] | None = None
    """Indices that may be used (RSO: the accepted answers); None: all."""

    def usable(self) -> list[int]:
        allowed = range(len(self.answers)) if self.selected is None else sorted(self.selected)
        return [i for i in allowed if self.answers[i].strip() and self.scores[i] is not None]


@dataclass
class PairStats:
    candidates: int = 0
    """Answers sampled."""
    empty: int = 0
    """Answers that were empty after decoding (never paired)."""
    discarded: int = 0
    """Answers in no pair (empty ones included)."""
    judge_failures: int = 0
    """Answers whose judgement failed (never paired)."""
    pairs: int = 0
    """Training records written: pairs, or lists with ``list`` pairing."""
    prompts_without_pair: int = 0
    """Prompts that gave no record (no two answers differ by more than the margin; lists: too few
    distinct usable answers)."""
    list_ties: int = 0
    """Lists: neighbouring answers with equal scores (kept in sampling order)."""
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


def list_indices(item: Candidates, size: int, margin: float) -> list[int]:
    """A ranked list of ``size`` distinct usable answers, best first, or [] when the prompt has fewer
    or when best and worst do not differ by more than ``margin``. Equal scores keep sampling order;
    with more answers than ``size``, the list takes answers evenly spread over the ranking (best and
    worst included). Repeated answers (after whitespace and case) count once: the data pipeline
    drops lists with identical answers."""
    seen, distinct = set(), []
    for i in item.usable():
        text = " ".join(item.answers[i].lower().split())
        if text not in seen:
            seen.add(text)
            distinct.append(i)
    ranked = sorted(distinct, key=lambda i: -item.scores[i])  # stable: ties stay in sampling order
    if len(ranked) < size or item.scores[ranked[0]] - item.scores[ranked[-1]] <= margin:
        return []
    if len(ranked) > size:
        ranked = [ranked[round(j * (len(ranked) - 1) / (size - 1))] for j in range(size)]
    return ranked


def form_pairs(items: list[Candidates], pairing: str, margin: float,
               list_size: int = 0) -> tuple[list[dict], PairStats]:
    """Pair records (``prompt``, ``chosen``, ``rejected`` and both scores) or, for ``list`` pairing,
    ranked lists (``prompt``, ``completions`` best first, ``scores``) of ``list_size`` answers, and the
    counts behind them. Identical answers are judged once and never paired with each other (their
    scores are equal)."""
    if pairing == "list" and list_size < 2:
        raise ValueError("list pairing needs the list size (≥ 2): every list of a round has the same length")
    records, stats = [], PairStats()
    for item in items:
        stats.candidates += len(item.answers)
        stats.empty += sum(not a.strip() for a in item.answers)
        stats.judge_failures += sum(s is None for s in item.scores)
        if pairing == "list":
            ranked = list_indices(item, list_size, margin)
            used, new = set(ranked), [_list_record(item, ranked)] if ranked else []
            stats.list_ties += sum(item.scores[a] == item.scores[b] for a, b in zip(ranked, ranked[1:]))
        else:
            chosen = pair_indices(item.scores, item.usable(), pairing, margin)
            used, new = {i for pair in chosen for i in pair}, [_record(item, w, l) for w, l in chosen]
        stats.discarded += len(item.answers) - len(used)
        stats.prompts_without_pair += not new
        stats.per_prompt.append(len(new))
        records += new
    stats.pairs = len(records)
    return records, stats


def _list_record(item: Candidates, ranked: list[int]) -> dict:
    return {"prompt": item.prompt, "completions": [_message(item, item.answers[i]) for i in ranked],
            "scores": [item.scores[i] for i in ranked]}


def _message(item: Candidates, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(item.prompt, list) else text


def _record(item: Candidates, w: int, l: int) -> dict:
    return {"prompt": item.prompt, "chosen": _message(item, item.answers[w]),
            "rejected": _message(item, item.answers[l]),
            "score_chosen": item.scores[w], "score_rejected": item.scores[l]}
