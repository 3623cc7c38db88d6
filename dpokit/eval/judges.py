"""Judges: Python functions that say which of two answers is better.

A judge is given as ``package.module:function``. A function of two arguments
``(prompt, response) -> float`` is a pointwise scorer (higher is better); a function of three
``(prompt, response_a, response_b) -> float`` returns the probability that a beats b.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from dpokit.errors import UserError

Compare = Callable[[str, str, str], float]


def load_judge(spec: str) -> Compare:
    return as_compare(import_judge(spec))


def import_judge(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError("must look like package.module:function", where="--judge", field=spec)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import: {exc}", where="--judge", field=spec) from None
    if not callable(fn):
        raise UserError("is not a function", where="--judge", field=spec)
    return fn


def is_scorer(fn: Callable) -> bool:
    return len(inspect.signature(fn).parameters) == 2


def as_compare(fn: Callable) -> Compare:
    """Wrap a scorer or a pairwise judge as compare(prompt, a, b) -> P(a beats b), ties 0.5."""
    n_args = len(inspect.signature(fn).parameters)
    if n_args == 3:
        return fn
    if not is_scorer(fn):
        raise UserError("a judge takes (prompt, response) or (prompt, response_a, response_b)",
                        where="--judge", field=getattr(fn, "__name__", str(fn)))

    def compare(prompt: str, a: str, b: str) -> float:
        sa, sb = fn(prompt, a), fn(prompt, b)
        return 1.0 if sa > sb else 0.0 if sa < sb else 0.5

    return compare
