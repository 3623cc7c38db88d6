"""A synthetic preference task with a learnable rule, for learning tests of every loss.

Each prompt names a topic t (one of 8). The preferred answer uses words of word group t,
the dispreferred one words of group t+4 (mod 8); lists rank group t, t+2, t+4, t+6. Every
word is preferred under some topics and dispreferred under others, so a random model's
likes and dislikes cancel and held-out accuracy starts near 0.5; only the topic → words
rule separates the answers. Held-out pairs use fresh prompts and word combinations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from dpokit.data import collate, read_records, tokenize_records
from dpokit.policies.lm.logprobs import completion_logps

TOPICS = "red blue green gold pink gray teal plum".split()
GROUPS = [w.split() for w in ("film food", "good bad", "warm cold", "quick slow", "lovely awful", "kind rude",
                               "clean messy", "bright dull")]
LENGTH = 3  # words per answer


def _answer(rng: random.Random, group: int) -> str:
    return " " + " ".join(rng.choice(GROUPS[group % 8]) for _ in range(LENGTH))


def _item(rng: random.Random, i: int) -> tuple[int, str]:
    topic = i % 8
    return topic, f"Topic {TOPICS[topic]}, item {rng.randint(100, 999)}:"


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t, prompt = _item(rng, i)
        out.append({"prompt": prompt, "chosen": _answer(rng, t), "rejected": _answer(rng, t + 4)})
    return out


def lists(n: int, seed: int, k: int = 4) -> list[dict]:
    """Lists of k answers, best first: answer j uses word group t + 2j."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t, prompt = _item(rng, i)
        out.append({"prompt": prompt, "completions": [_answer(rng, t + 2 * j) for j in range(k)]})
    return out


def unpaired(n: int, seed: int) -> list[dict]:
    """n examples with their own prompts, alternately desirable (group t) and undesirable (t + 4)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t, prompt = _item(rng, i // 2)
        good = i % 2 == 0
        out.append({"prompt": prompt, "completion": _answer(rng, t if good else t + 4), "label": good})
    return out


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _held_out_batch(tokenizer, path: Path) -> dict:
    records, _ = tokenize_records(read_records(path, "pair"), tokenizer, 64, 32)
    return collate(records, tokenizer.pad_token_id)


@torch.no_grad()
def preference_accuracy(model, tokenizer, path: Path) -> float:
    """Fraction of held-out pairs where the model gives the chosen answer the higher
    log-likelihood."""
    lp = completion_logps(model.eval(), _held_out_batch(tokenizer, path), 2)
    return (lp.sum[0] > lp.sum[1]).float().mean().item()


@torch.no_grad()
def reward_accuracy(model, start, tokenizer, path: Path) -> float:
    """Fraction of held-out pairs where the trained model raised the chosen answer's
    log-likelihood relative to the starting model more than the rejected one's, i.e. the
    implicit reward log π/π_start ranks the pair right (ties count half)."""
    batch = _held_out_batch(tokenizer, path)
    now, before = completion_logps(model.eval(), batch, 2).sum, completion_logps(start.eval(), batch, 2).sum
    r = now - before
    return ((r[0] > r[1]).float() + 0.5 * (r[0] == r[1]).float()).mean().item()
