"""Scoring a prompt's candidate answers with a judge, with every judgement cached on disk.

A pointwise judge scores each distinct answer once. A pairwise judge is turned into scores by
a round robin: an answer's score is its mean P(win) against the prompt's other candidates, each
pair asked in both orders (so a judge that favours the first position cancels out).

Cache keys hash (judge identity, prompt, answers in the order asked). The identity names the
judge's state, not just its spec: a model judge's weights digest and rubric, and for ``self``
the digest of the round's policy, so a self-judge's judgements are never reused by a later
round's (different) policy. A failed judgement (None) is cached too and counted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from dpokit.eval.judges import Judge, load_judge
from dpokit.store.atomic import write_text_atomic


class JudgeCache:
    """Judgements keyed by a hash of (judge identity, prompt, answers), saved as JSON in the run folder."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, float | None] = json.loads(path.read_text()) if path.is_file() else {}
        self.hits = self.misses = 0

    @staticmethod
    def key(identity: str, *args: str) -> str:
        return hashlib.sha256(json.dumps([identity, *args], ensure_ascii=False).encode()).hexdigest()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.values))


class CachedJudge:
    """A judge whose answers come from the cache when it has them; the misses of one call go to the
    judge as one batch."""

    def __init__(self, judge: Judge, cache: JudgeCache):
        self.judge, self.cache = judge, cache
        self.identity, self.pointwise = judge.identity, judge.pointwise
        self.failed = 0
        """Judgements asked through this object that failed (cached ones included): for a pairwise
        judge, comparisons, which leave an answer's score to its other comparisons."""

    def score(self, prompt: str, answers: Sequence[str]) -> list[float | None]:
        return self._lookup([(prompt, a) for a in answers], lambda todo: self.judge.score(prompt, [a for _, a in todo]))

    def compare(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        return self._lookup([(prompt, a, b) for a, b in pairs],
                            lambda todo: self.judge.compare(prompt, [(a, b) for _, a, b in todo]))

    def _lookup(self, items: list[tuple[str, ...]], ask) -> list[float | None]:
        keys = [self.cache.key(self.identity, *item) for item in items]
        todo = {k: item for k, item in zip(keys, items) if k not in self.cache.values}  # distinct misses
        self.cache.misses += len(todo)
        self.cache.hits += len(keys) - len(todo)
        if todo:
            self.cache.values.update(zip(todo, ask(list(todo.values()))))
        values = [self.cache.values[k] for k in keys]
        self.failed += sum(v is None for v in values)
        return values


def candidate_scores(judge, prompt: str, answers: list[str]) -> list[float | None]:
    """Each answer's score: the judge's, or its round-robin mean P(win) (both orders) against the
    others for a pairwise judge. None where every judgement of an answer failed."""
    if judge.pointwise:
        return judge.score(prompt, answers)
    n = len(answers)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    asked = judge.compare(prompt, [(answers[i], answers[j]) for i, j in pairs])
    result = dict(zip(pairs, asked))
    scores: list[float | None] = []
    for i in range(n):
        wins = [(result[i, j] + 1.0 - result[j, i]) / 2 for j in range(n)
                if j != i and result[i, j] is not None and result[j, i] is not None]
        scores.append(sum(wins) / len(wins) if wins else None)
    return scores


class CandidateJudge:
    """Scores for each prompt's candidates under the judge ``spec``, cached in ``cache_path`` (a
    shortcut for scripts and tests; the round loop uses ``RunJudges``)."""

    def __init__(self, spec: str, cache_path: Path):
        self.cache = JudgeCache(cache_path)
        self.judge = CachedJudge(load_judge(spec), self.cache)
        self.pointwise = self.judge.pointwise

    def scores(self, prompt: str, answers: list[str]) -> list[float | None]:
        return candidate_scores(self.judge, prompt, answers)


class RunJudges:
    """The judges of an online run, all cached in one file: the sampling judge of each round (the
    same judge every round; for ``self``, the round's starting policy) and the evaluation judge
    (for ``self``, the initial model, so that every round is measured with the same yardstick)."""

    def __init__(self, o, initial_model: str, cache_path: Path, trust_remote_code: bool = False,
                 allow_pickle: bool = False, dtype: str = "auto"):
        self.spec, self.initial = o.judge, initial_model
        self.cache = JudgeCache(cache_path)
        self.options = {"mode": o.judge_mode, "rubric": o.judge_rubric, "batch_size": o.generation_batch_size,
                        "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle, "dtype": dtype}
        # built now, so a bad spec or rubric fails before any round; a model judge loads its weights on first use
        self.fixed = None if o.judge == "self" else load_judge(o.judge, **self.options)

    def for_round(self, policy: str) -> CachedJudge:
        return CachedJudge(self.fixed or load_judge("self", self_model=policy, **self.options), self.cache)

    def for_eval(self) -> CachedJudge:
        return self.for_round(self.initial)


def release(judge: CachedJudge) -> None:
    """Free a model judge's weights (it reloads them if asked again)."""
    close = getattr(judge.judge, "close", None)
    if close is not None:
        close()
