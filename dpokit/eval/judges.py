"""Judges: one interface over Python functions, reward models and LLMs used as judges.

A judge spec names one of (docs/online.md has the table):

- ``fn:package.module:function`` (or the bare ``package.module:function``): a function of two
  arguments ``(prompt, response) -> float`` is a pointwise scorer (higher is better); of three,
  ``(prompt, response_a, response_b) -> float`` returns the probability that a beats b.
- ``rm:PATH``: a local HF sequence-classification model, pointwise (``model_judges.py``).
- ``llm:PATH``: a local causal LM prompted with a rubric, pointwise or pairwise.
- ``self``: the policy being trained (or evaluated) as that LLM judge.

Every judge offers the same calls, batched over one prompt's answers:

- ``identity``: a string naming the judge and its state (a model's digest, the rubric, a
  function's code), the key under which its judgements are cached;
- ``pointwise``: True when it scores answers, False when it compares two;
- ``score(prompt, answers) -> [score or None]`` (pointwise judges);
- ``compare(prompt, pairs) -> [P(first beats second) or None]`` (pairwise judges), asked in the
  order given: ``both_orders`` cancels a judge's position bias.

None marks a failed judgement (a function raising an exception or returning something that is
not a finite number, an LLM putting no probability on any valid answer): it is counted and the
answer is left out, never silently given a score.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

from dpokit.errors import UserError

Compare = Callable[[str, str, str], float]
KINDS = ("fn", "rm", "llm", "self")


class Judge(Protocol):
    identity: str
    pointwise: bool

    def score(self, prompt: str, answers: Sequence[str]) -> list[float | None]: ...

    def compare(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]: ...


def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, target) of a judge spec; a spec without a known ``kind:`` prefix is a function."""
    if spec == "self":
        return "self", ""
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS and kind != "self":
        if not rest:
            raise UserError(f"names no {'function' if kind == 'fn' else 'model folder'} after '{kind}:'",
                            where="--judge", field=spec)
        return kind, rest
    return "fn", spec


def load_judge(spec: str, self_model: str | None = None, mode: str = "score", rubric: str = "",
               batch_size: int = 16, trust_remote_code: bool = False, allow_pickle: bool = False,
               dtype: str = "auto") -> Judge:
    """The judge ``spec`` names; ``self_model`` is the model ``self`` stands for, ``mode`` (score or
    pairwise) and ``rubric`` (instructions replacing the default) apply to LLM judges."""
    kind, target = parse_spec(spec)
    if kind == "fn":
        return FunctionJudge(target)
    from dpokit.eval.model_judges import LLMJudge, RewardModelJudge

    options = {"batch_size": batch_size, "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle,
               "dtype": dtype}
    if kind == "rm":
        return RewardModelJudge(target, **options)
    if kind == "self":
        if not self_model:
            raise UserError("'self' needs a policy to judge with", where="--judge", field=spec)
        return LLMJudge(self_model, mode, rubric, label="self", **options)
    return LLMJudge(target, mode, rubric, **options)


def import_judge(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError("must look like package.module:function, fn:..., rm:PATH, llm:PATH or self",
                        where="--judge", field=spec)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import: {exc}", where="--judge", field=spec) from None
    if not callable(fn):
        raise UserError("is not a function", where="--judge", field=spec)
    return fn


def is_scorer(fn: Callable) -> bool:
    return len(inspect.signature(fn).parameters) == 2


def _number(value) -> float | None:
    """A judge's answer as a finite float, or None (a failed judgement)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def code_digest(fn: Callable) -> str:
    """A hash of the source file that defines ``fn`` (its helpers usually live there too), so that
    editing a judge makes it a new judge for every cache; empty where there is no file."""
    try:
        source = inspect.getsourcefile(inspect.unwrap(fn))
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
    except (TypeError, OSError):
        return ""


class FunctionJudge:
    """A Python function judge; its identity is the spec (``fn:`` stripped, so both forms share a
    cache) and the digest of the code that defines it."""

    def __init__(self, spec: str):
        self.fn = import_judge(spec)
        n_args = len(inspect.signature(self.fn).parameters)
        if n_args not in (2, 3):
            raise UserError("a judge takes (prompt, response) or (prompt, response_a, response_b)",
                            where="--judge", field=spec)
        self.identity, self.pointwise = f"{spec}:{code_digest(self.fn)}", n_args == 2
        self.first_error: str | None = None
        """The first exception the function raised, as ``Type: message``, for the report."""

    def score(self, prompt: str, answers: Sequence[str]) -> list[float | None]:
        return [self._call(prompt, a) for a in answers]

    def compare(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        return [self._call(prompt, a, b) for a, b in pairs]

    def _call(self, *args: str) -> float | None:
        try:
            return _number(self.fn(*args))
        except Exception as exc:  # noqa: BLE001 - one answer the user's judge chokes on must not end the run
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
            return None


def both_orders(judge: Judge, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
    """P(a beats b) averaged over the two orders (a, b) and (b, a), so that a judge's preference
    for a position cancels: the results for (a, b) and (b, a) sum to 1. One batched call."""
    pairs = list(pairs)
    asked = judge.compare(prompt, pairs + [(b, a) for a, b in pairs])
    out = []
    for first, second in zip(asked[:len(pairs)], asked[len(pairs):]):
        out.append(None if first is None or second is None else (first + 1.0 - second) / 2)
    return out


def score_outcome(sa: float | None, sb: float | None) -> float | None:
    """P(a beats b) from two pointwise scores: 1, 0, or ½ on a tie; None if either judgement failed."""
    if sa is None or sb is None:
        return None
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def as_compare(fn: Callable) -> Compare:
    """Wrap a scorer or a pairwise function as compare(prompt, a, b) -> P(a beats b), ties 0.5."""
    n_args = len(inspect.signature(fn).parameters)
    if n_args == 3:
        return fn
    if not is_scorer(fn):
        raise UserError("a judge takes (prompt, response) or (prompt, response_a, response_b)",
                        where="--judge", field=getattr(fn, "__name__", str(fn)))

    def compare(prompt: str, a: str, b: str) -> float:
        return score_outcome(fn(prompt, a), fn(prompt, b))

    return compare
