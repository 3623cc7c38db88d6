"""A simulated stream of feedback whose preference drifts, for ``dpokit update`` (docs/updates.md).

Each day, the deployed model answers prompts; a programmatic rule stands in for the users and
scores the answers; each prompt's best and worst answers make a pair (as thumbs on what the model
said). The rule may change between days: the drift. ``flip`` swaps every pair, the deliberately
wrong labels an update must refuse. The rules count letters, which a tiny random model learns
within a few steps and a real one too: ``more_e`` and ``more_a`` are usable as judges
(``dpokit.tasks.drift:more_e``)."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.policies.lm.generate import sample
from dpokit.policies.lm.load import load_model, load_tokenizer


def more_e(prompt: str, response: str) -> float:
    """More letters ``e`` is better."""
    return float(response.lower().count("e"))


def more_a(prompt: str, response: str) -> float:
    """More letters ``a`` is better: the preference after the drift."""
    return float(response.lower().count("a"))


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


RULES = {"e": more_e, "a": more_a}
"""A day's preference by its letter; ``e!``: that day's labels flipped."""


def mean_score(model: str, rule, texts: list[str], seed: int = 12345, max_new_tokens: int = 12) -> float:
    """The mean score under ``rule`` of ``model``'s answers to ``texts`` (one sampled answer each)."""
    tokenizer, module = load_tokenizer(model), load_model(model)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    answers = sample(module, tokenizer, ids, max_new_tokens, 1.0, 1.0, 64, seed)
    return sum(rule(p, tokenizer.decode(a, skip_special_tokens=True)) for p, a in zip(texts, answers)) / len(texts)


def stream(folder: Path, start_model: str, days: list[str], settings: dict, pairs_per_day: int = 96,
           held_prompts: int = 128, log=print) -> dict:
    """Days of feedback on the current champion, each followed by ``dpokit update`` judged by that
    day's rule, then a broken version (the last refused one, promoted by hand) that ``versions
    check`` must roll back. ``settings``: the update's training and evaluation settings (dotted
    keys); the registry starts with ``start_model`` briefly fine-tuned (SFT) as v1. Returns the
    timeline: the scores of v1's answers, one row a day, and the check's outcome."""
    from dpokit.config import load_config
    from dpokit.store.versions import Registry, promote
    from dpokit.train import train
    from dpokit.update.canary import CanaryConfig, check
    from dpokit.update.config import UpdateConfig
    from dpokit.update.run import update

    folder.mkdir(parents=True, exist_ok=True)
    reg = Registry(folder / "registry")
    held = write_prompts(folder / "held_prompts.jsonl", held_prompts, 50_000)
    texts = prompts(held_prompts, 50_000)
    if not reg.ids():
        seed_data = feedback(start_model, folder / "day0.jsonl", more_e, 16, 90_000)
        train(load_config(None, {"model.path": start_model, "data.train": str(seed_data), "loss.name": "sft",
                                 "train.output": str(folder / "v1"), "train.max_steps": 2, "train.progress": False,
                                 "train.registry": str(reg.root), **_data_settings(settings)}), log=log)
        promote(reg, "v1")
    start = {f"score_{k}": mean_score(reg.get(reg.current())["model"], rule, texts) for k, rule in RULES.items()}
    rows = []
    for day, spec in enumerate(days, 1):
        letter, flipped = spec.rstrip("!"), spec.endswith("!")
        champion = reg.get(reg.current())["model"]
        data = feedback(champion, folder / f"day{day}.jsonl", RULES[letter], pairs_per_day, day * 1000,
                        seed=day, flip=flipped)
        judge = f"dpokit.tasks.drift:more_{letter}"
        state = update(load_config(None, {**settings, "data.train": str(data), "train.registry": str(reg.root),
                                          "update.eval_prompts": str(held), "update.judge": judge},
                                   root=UpdateConfig), log=log)
        current = reg.get(reg.current())["model"]
        f, d = state["figures"], state["decision"]
        rows.append({"day": day, "preference": f"more {letter}", "labels": "flipped" if flipped else "true",
                     "challenger": state["challenger"], "promoted": d["promoted"], "win_rate": f["win_rate"],
                     "win_ci95": [f["win_low"], f["win_high"]], "kl": f["kl"], "current": reg.current(),
                     **{f"score_{k}": mean_score(current, rule, texts) for k, rule in RULES.items()}})
        log(f"[drift] day {day}: {d['summary']}")
    outcome = broken_version(folder, reg, days[-1].rstrip("!"), settings, held, pairs_per_day, log)
    return {"start": {"current": reg.history()[0], **start}, "days": rows, "rollback": outcome}


def broken_version(folder: Path, reg, letter: str, settings: dict, held: Path, n: int, log) -> dict:
    """A version trained on flipped labels of the current preference, promoted by hand (no update
    would), then one ``versions check``: the rollback it must make."""
    from dpokit.config import load_config
    from dpokit.store.versions import promote
    from dpokit.train import train
    from dpokit.update.canary import CanaryConfig, check

    before = reg.current()
    data = feedback(reg.get(before)["model"], folder / "broken.jsonl", RULES[letter], n, 70_000, flip=True)
    train_settings = {k: v for k, v in settings.items() if not k.startswith("update.")}
    train_settings["train.max_steps"] = 3 * settings.get("train.max_steps", 100)  # broken on purpose: overtrained
    train(load_config(None, {**train_settings, "model.path": reg.get(before)["model"], "data.train": str(data),
                             "train.output": str(folder / "broken"), "train.registry": str(reg.root)}), log=log)
    broken = reg.ids()[-1]
    promote(reg, broken, f"promote {broken} by hand (trained on flipped labels)")
    said = check(reg, CanaryConfig(prompts=str(held), judge=f"dpokit.tasks.drift:more_{letter}",
                                   **_canary_settings(settings)), log)
    log(f"[drift] broken {broken} promoted by hand; check: {said}")
    return {"broken": broken, "was_current": before, "check": said, "current_after": reg.current()}


def _data_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k.startswith("data.max_")}


def _canary_settings(settings: dict) -> dict:
    keys = {"data.max_length": "max_length", "data.max_prompt_length": "max_prompt_length",
            "update.max_new_tokens": "max_new_tokens"}
    return {keys[k]: v for k, v in settings.items() if k in keys}
