"""``dpokit quickstart``: SFT, then DPO, then evaluation, on the shipped reviews task.

The task (``dpokit/tasks/reviews.py``): asked for a short review of a film, café, gadget…,
prefer the warm, enthusiastic answer over the negative one. The judge is a general-purpose
sentiment lexicon, and the 64 evaluation prompts name subjects that never occur in training.
The table compares the base model with the SFT→DPO model on those prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dpokit.config import EvalConfig, load_config
from dpokit.eval import evaluate_models
from dpokit.models import BUILTIN_SMOLLM2, embedded_smollm2
from dpokit.tasks.reviews import DEFAULT_DIR as TASK_DIR
from dpokit.tiny import write_tiny_model
from dpokit.train import train

JUDGE = "dpokit.tasks.reviews:judge"


@dataclass
class Recipe:
    """Settings of the two stages; the real one is sized to finish in ~10 minutes on 2 CPU cores."""

    sft_steps: int
    sft_lr: float
    dpo_steps: int
    dpo_lr: float
    batch_size: int
    beta: float
    max_new_tokens: int
    bf16: bool


REAL = Recipe(sft_steps=16, sft_lr=3e-5, dpo_steps=30, dpo_lr=5e-6, batch_size=8, beta=0.1,
              max_new_tokens=48, bf16=True)
TINY = Recipe(sft_steps=10, sft_lr=3e-3, dpo_steps=10, dpo_lr=1e-3, batch_size=8, beta=0.1,
              max_new_tokens=24, bf16=False)


def _stage(model: str, output: Path, loss: str, steps: int, lr: float, recipe: Recipe) -> Path:
    # A frozen copy is the cheapest reference here: the run sees fewer pairs than the file
    # holds, so precomputing log-probs for all of them would cost more than it saves.
    cfg = load_config(None, {
        "model.path": model, "data.train": str(TASK_DIR / "train.jsonl"), "train.output": str(output),
        "loss.name": loss, "loss.beta": recipe.beta, "train.max_steps": steps, "train.lr": lr,
        "train.batch_size": recipe.batch_size, "train.warmup_steps": max(1, steps // 10),
        "train.bf16": recipe.bf16, "train.ref": "copy", "data.max_length": 256, "data.max_prompt_length": 128})
    result = train(cfg)
    if result.stopped_by:  # SIGTERM / Ctrl-C: the stage saved a checkpoint; the quickstart stops here
        raise KeyboardInterrupt
    return result.final


def quickstart(output: str = "runs/quickstart", tiny: bool = False) -> dict:
    start = time.perf_counter()
    out = Path(output)
    recipe = TINY if tiny else REAL
    if tiny:
        base = str(write_tiny_model(out / "base", seed=0))
    else:
        print(f"[quickstart] base model: {BUILTIN_SMOLLM2}")
        base = str(embedded_smollm2())
    sft = _stage(base, out / "sft", "sft", recipe.sft_steps, recipe.sft_lr, recipe)
    dpo = _stage(str(sft), out / "dpo", "sigmoid", recipe.dpo_steps, recipe.dpo_lr, recipe)
    cfg = EvalConfig(model=str(dpo), ref_model=base, prompts=str(TASK_DIR / "prompts.jsonl"), judge=JUDGE,
                     pairs=str(TASK_DIR / "eval.jsonl"), beta=recipe.beta, max_new_tokens=recipe.max_new_tokens,
                     bf16=recipe.bf16, output=str(out / "eval"), batch_size=32).validate()
    report = evaluate_models(cfg)
    print(table(report))
    print(f"[quickstart] done in {time.perf_counter() - start:.0f} s; samples in {out / 'eval' / 'samples.jsonl'}")
    return report


def table(r: dict) -> str:
    """Before = the base model (it is its own reference: win rate ½ and KL 0 by definition)."""
    lo, hi = r["win_rate_ci95"]
    rows = [
        ("judge win rate vs base [95% CI]", "50% (itself)", f"{r['win_rate']:.0%} [{lo:.0%}, {hi:.0%}]"),
        ("mean judge score (−1…1)", f"{r['mean_score_reference']:+.2f}", f"{r['mean_score_policy']:+.2f}"),
        ("reward accuracy, held-out pairs", "— (all rewards 0)", f"{r['reward_accuracy']:.0%}"),
        ("sampled KL to base (nats)", "0", f"{r['kl_sampled']:.2f}"),
        ("mean answer length (tokens)", f"{r['mean_length_reference']:.0f}", f"{r['mean_length_policy']:.0f}"),
    ]
    lines = [f"{r['prompts']} held-out prompts; reward = β·log π/π_base on {r['pairs']} held-out pairs",
             f"{'':34s}{'before (base)':>20s}{'after (SFT → DPO)':>24s}"]
    lines += [f"{label:34s}{a:>20s}{b:>24s}" for label, a, b in rows]
    return "\n".join(lines)
