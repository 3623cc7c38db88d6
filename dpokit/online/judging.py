"""Scoring a prompt's candidate answers with a judge, with every judgement cached on disk.

A pointwise judge (prompt, answer) -> score is called once per distinct answer. A pairwise judge
(prompt, a, b) -> P(a beats b) is turned into scores by a round robin: an answer's score is its
mean P(win) against the prompt's other candidates, each pair asked in both orders (so a judge
that favours the first position cancels out).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from dpokit.atomic import write_text_atomic
from dpokit.eval.judges import import_judge, is_scorer


class JudgeCache:
    """Judgements keyed by a hash of (judge, prompt, answers), saved as JSON in the run folder."""

    def __init__(self, path: Path, judge: str):
        self.path, self.judge = path, judge
        self.values: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.hits = self.misses = 0

    def get(self, fn: Callable[..., float], *args: str) -> float:
        key = hashlib.sha256(json.dumps([self.judge, *args], ensure_ascii=False).encode()).hexdigest()
        if key in self.values:
            self.hits += 1
        else:
            self.misses += 1
            self.values[key] = float(fn(*args))
        return self.values[key]

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.values))


class CandidateJudge:
    """Scores for each prompt's candidates under the judge ``spec`` (``package.module:function``)."""

    def __init__(self, spec: str, cache_path: Path):
        self.fn = import_judge(spec)
        self.pointwise = is_scorer(self.fn)
        self.cache = JudgeCache(cache_path, spec)

    def scores(self, prompt: str, answers: list[str]) -> list[float]:
        if self.pointwise:
            return [self.cache.get(self.fn, prompt, a) for a in answers]
        return [self._round_robin(prompt, answers, i) for i in range(len(answers))]

    def _round_robin(self, prompt: str, answers: list[str], i: int) -> float:
        wins = []
        for j, other in enumerate(answers):
            if j != i:
                first = self.cache.get(self.fn, prompt, answers[i], other)
                second = 1.0 - self.cache.get(self.fn, prompt, other, answers[i])
                wins.append((first + second) / 2)
        return sum(wins) / len(wins)
