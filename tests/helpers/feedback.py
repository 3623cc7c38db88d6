"""Feedback on a deployed model's own answers, for the tests of ``dpokit update``: answers sampled
from a model, scored by a programmatic rule, the best and worst of each prompt made a pair (as
users' thumbs on what the model said). ``flip`` swaps every pair: deliberately wrong labels."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.policies.lm.generate import sample
from dpokit.policies.lm.load import load_model, load_tokenizer


def prompts(n: int, start: int = 0) -> list[str]:
    return [f"Say something {i}:" for i in range(start, start + n)]


def write_prompts(path: Path, n: int, start: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(n, start)))
    return path


def feedback(model: str, path: Path, rule, n: int, start: int = 0, k: int = 4, seed: int = 0,
             flip: bool = False, max_new_tokens: int = 12) -> Path:
    """Pairs (best, worst under ``rule(prompt, answer)``) of ``k`` answers of ``model`` to ``n`` prompts."""
    tokenizer, module = load_tokenizer(model), load_model(model)
    texts = prompts(n, start)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    draws = [sample(module, tokenizer, ids, max_new_tokens, 1.0, 1.0, 64, seed + j) for j in range(k)]
    rows = []
    for i, prompt in enumerate(texts):
        answers = [tokenizer.decode(d[i], skip_special_tokens=True) for d in draws]
        ranked = sorted(answers, key=lambda a: rule(prompt, a))
        best, worst = ranked[-1], ranked[0]
        if rule(prompt, best) == rule(prompt, worst) or best == worst:
            continue  # no preference between this prompt's answers
        chosen, rejected = (worst, best) if flip else (best, worst)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
