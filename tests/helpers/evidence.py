"""Online rounds against one offline round on the same pair budget, shared by
tests/test_online_evidence.py and benchmarks/online_vs_offline.py.

Every arm samples K answers per prompt, pairs best against worst, and trains with the same loss,
optimizer settings, epochs and seed; they differ only in where the answers come from:

- ``online``: R rounds of P prompts, each sampled from the previous round's policy, reference fixed
  to the initial model;
- ``online-sdpo``: the same, with each round's reference set to its starting policy (sDPO);
- ``offline``: one round sampled from the initial model, trained on all its pairs at once;
- ``offline-long``: ``offline`` trained R times as many epochs, to see whether more passes over the
  initial model's pairs close the gap (it has R times the optimizer steps of the others);
- ``offline-rounds``: R rounds like ``online``, but each samples the initial model
  (``online.sample_from initial``), with about 1/R of the pair budget per round: the control that
  tells what on-policy samples bring apart from training in rounds.

The pair budget is the online arm's: a prompt whose K answers all score the same gives no pair, and
the initial model leaves more such prompts than a trained policy, so the offline arms sample up to
2·R·P prompts (the online arm's R·P first, then fresh ones) and keep the fewest, in order, that give
as many pairs (``online.max_pairs``). With the same epochs, the optimizer steps are then equal up to
rounding (⌈pairs / batch⌉ per round). Every arm is evaluated on the same held-out prompts against
the initial model with the same seed, so the initial model's answers are the same for every arm and
the comparison is paired.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dpokit.config import load_config
from dpokit.online import OnlineConfig, online

ARMS = ("online", "online-sdpo", "offline", "offline-long", "offline-rounds")


@dataclass
class Budget:
    """What every arm shares. The defaults are the tiny-model setting of the test."""

    judge: str = "helpers.judges:count_k"
    rounds: int = 3
    prompts_per_round: int = 8
    samples: int = 8
    max_new_tokens: int = 10
    loss: str = "sigmoid"
    beta: float = 0.1
    lr: float = 2e-2
    epochs: int = 2
    batch_size: int = 4
    eval_prompts: int = 64
    max_length: int = 96
    max_prompt_length: int = 32
    bf16: bool = False


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    return path


def numbered_prompts(n: int, start: int) -> list[str]:
    return [f"Tell me about thing {i}" for i in range(start, start + n)]


def arm_config(arm: str, model: str, out: Path, prompts: Path, held: Path, b: Budget, seed: int,
               pairs: int = 0) -> OnlineConfig:
    """The arm's run. Offline arms sample twice the prompts they need and keep ``pairs`` pairs in all."""
    offline, one_round = arm.startswith("offline"), arm in ("offline", "offline-long")
    rounds = 1 if one_round else b.rounds
    return load_config(None, {
        "model.path": model, "train.output": str(out / arm), "online.prompts": str(prompts),
        "online.eval_prompts": str(held), "online.judge": b.judge, "online.rounds": rounds,
        "online.samples_per_prompt": b.samples, "online.sample_from": "initial" if offline else "current",
        "online.prompts_per_round": b.prompts_per_round * (2 if offline else 1) * b.rounds // rounds,
        "online.max_pairs": round(pairs / rounds) if offline else 0, "online.max_new_tokens": b.max_new_tokens,
        "online.ref_update": "round" if arm == "online-sdpo" else "fixed", "online.generation_batch_size": 64,
        "loss.name": b.loss, "loss.beta": b.beta, "train.lr": b.lr, "train.batch_size": b.batch_size,
        "train.epochs": b.epochs * b.rounds if arm == "offline-long" else b.epochs, "train.seed": seed,
        "train.bf16": b.bf16,
        # A constant rate: online runs one schedule per round, so a decaying one would differ between arms.
        "train.scheduler": "constant", "train.progress": False, "train.ref": "copy",
        "data.max_length": b.max_length, "data.max_prompt_length": b.max_prompt_length}, root=OnlineConfig)


def run_arms(model: str, out: Path, b: Budget, seed: int, arms=("online", "offline"),
             prompts: list[str] | None = None, held: list[str] | None = None) -> dict[str, list[dict]]:
    """Each arm's report entries (one per round), on the given or the numbered prompts. The online
    arms run first: the pair count of the first of them is the budget of the offline arms."""
    if not {"online", "online-sdpo"} & set(arms):
        raise ValueError("the offline arms take their pair budget from an online arm: add online")
    out.mkdir(parents=True, exist_ok=True)
    n = 2 * b.rounds * b.prompts_per_round
    train_file = write_prompts(out / "prompts.jsonl", (prompts or numbered_prompts(n, 0))[:n])
    held_file = write_prompts(out / "held.jsonl", (held or numbered_prompts(b.eval_prompts, 10_000))[:b.eval_prompts])
    results: dict[str, list[dict]] = {}
    for arm in sorted(arms, key=lambda a: a.startswith("offline")):
        first_online = next((results[a] for a in ("online", "online-sdpo") if a in results), [])
        budget = sum(e["pairs"] for e in first_online)
        cfg = arm_config(arm, model, out, train_file, held_file, b, seed, budget)
        results[arm] = online(cfg, log=lambda *_: None).rounds
    return results


def summary(entries: list[dict]) -> dict:
    """An arm's totals and its final round's evaluation."""
    last = entries[-1]
    return {"pairs": sum(e["pairs"] for e in entries), "steps": sum(e["train_steps"] or 0 for e in entries),
            "win_rate": last["win_rate"], "ci95": last["win_rate_ci95"], "kl": last["kl_sampled"],
            "score": last.get("mean_score_policy"), "score_initial": last.get("mean_score_reference"),
            "length": last["mean_length"], "per_round": [round(e["win_rate"], 3) for e in entries]}
