"""``dpokit quickstart``: SFT, then DPO, then evaluation, on the shipped reviews task.

The task (``dpokit/tasks/reviews.py``): asked for a short review of a film, café, gadget…,
prefer the warm, enthusiastic answer over the negative one. The judge is a general-purpose
sentiment lexicon, and the 64 evaluation prompts name subjects that never occur in training.
The table compares the base model, the SFT model and the SFT → DPO model on those prompts, so
it shows what DPO adds over SFT, not only what both stages give together.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

from dpokit.config import EvalConfig, load_config
from dpokit.data import encode_prompt
from dpokit.eval.evaluate import (decode, eval_autocast, judge_answers, kl_from_logps, pair_metrics, prompt_text,
                                  read_prompts, sample_answers, sequence_logps, win_rate, write_report)
from dpokit.eval.judges import load_judge
from dpokit.policies.lm.load import BUILTIN_SMOLLM2, embedded_smollm2, load_model, load_tokenizer
from dpokit.policies.lm.tiny import write_tiny_model
from dpokit.store.atomic import write_text_atomic
from dpokit.tasks.reviews import DEFAULT_DIR as TASK_DIR
from dpokit.train import train_within

JUDGE = "dpokit.tasks.reviews:judge"


@dataclass
class Recipe:
    """Settings of the two stages; the real one takes 5 to 6 minutes on 2 AVX-512 cores held to
    AVX2 (fp32; about 4 s per SFT step and 8 s per DPO step), 2.5 to 4 with native bf16."""

    sft_steps: int
    sft_lr: float
    dpo_steps: int
    dpo_lr: float
    batch_size: int
    beta: float
    max_new_tokens: int
    dtype: str = "auto"
    """bf16 where the CPU or GPU runs it natively, else fp32 (``dpokit.precision``)."""


# 16 DPO steps were measured too: 74% over base but 52% [42%, 62%] over SFT, i.e. nothing added
# by DPO; 20 steps gave 72-78% over SFT. LoRA stages (r 16, SFT lr 4e-4) train about a fifth
# faster: DPO lr 5e-5 added little (56% over SFT, KL 0.17), 2.5e-4 gave 78% over SFT but moved
# 7.3 nats from it, against 1.6 for full fine-tuning.
REAL = Recipe(sft_steps=10, sft_lr=4e-5, dpo_steps=20, dpo_lr=7e-6, batch_size=8, beta=0.1, max_new_tokens=40)
TINY = Recipe(sft_steps=10, sft_lr=3e-3, dpo_steps=10, dpo_lr=1e-3, batch_size=8, beta=0.1, max_new_tokens=24)


def _stage(model: str, output: Path, loss: str, steps: int, lr: float, recipe: Recipe) -> Path:
    """One training stage; a rerun skips it when its final model is complete and continues it
    from its newest checkpoint when a stop interrupted it."""
    # A frozen copy is the cheapest reference here: the run sees fewer pairs than the file
    # holds, so precomputing log-probs for all of them would cost more than it saves.
    cfg = load_config(None, {
        "model.path": model, "data.train": str(TASK_DIR / "train.jsonl"), "train.output": str(output),
        "loss.name": loss, "loss.beta": recipe.beta, "train.max_steps": steps, "train.lr": lr,
        "train.batch_size": recipe.batch_size, "train.warmup_steps": max(1, steps // 10),
        "train.dtype": recipe.dtype, "train.ref": "copy", "data.max_length": 256, "data.max_prompt_length": 128})
    if train_within(cfg, f"the {loss} stage") is None:
        print(f"[quickstart] {loss}: finished before, {output / 'final'}")
    return output / "final"


def _start(out: Path, recipe: Recipe, tiny: bool) -> None:
    """Keep what an earlier run of the same recipe finished in ``out``; start afresh otherwise."""
    settings, path = json.dumps({"recipe": asdict(recipe), "tiny": tiny}, sort_keys=True), out / "recipe.json"
    if path.is_file() and path.read_text() == settings:
        return
    for stage in ("sft", "dpo"):
        shutil.rmtree(out / stage, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, settings)


def quickstart(output: str = "runs/quickstart", tiny: bool = False) -> dict:
    start = time.perf_counter()
    out = Path(output)
    recipe = TINY if tiny else REAL
    _start(out, recipe, tiny)
    if tiny:
        base = str(write_tiny_model(out / "base", seed=0))
    else:
        print(f"[quickstart] base model: {BUILTIN_SMOLLM2}")
        base = str(embedded_smollm2())
    sft = _stage(base, out / "sft", "sft", recipe.sft_steps, recipe.sft_lr, recipe)
    dpo = _stage(str(sft), out / "dpo", "sigmoid", recipe.dpo_steps, recipe.dpo_lr, recipe)
    trained = time.perf_counter()
    cfg = EvalConfig(model=str(dpo), ref_model=base, prompts=str(TASK_DIR / "prompts.jsonl"), judge=JUDGE,
                     pairs=str(TASK_DIR / "eval.jsonl"), beta=recipe.beta, max_new_tokens=recipe.max_new_tokens,
                     dtype=recipe.dtype, output=str(out / "eval"), batch_size=32).validate()
    report = compare_stages(cfg, {"base": base, "sft": str(sft), "dpo": str(dpo)})
    print(table(report))
    print(f"[quickstart] done in {time.perf_counter() - start:.0f} s (training {trained - start:.0f} s, "
          f"evaluation {time.perf_counter() - trained:.0f} s); samples in {out / 'eval' / 'samples.jsonl'}")
    return report


COMPARISONS = (("sft", "base"), ("dpo", "base"), ("dpo", "sft"))
"""(policy, reference) pairs measured: what SFT gives, what both stages give, what DPO adds."""


def compare_stages(cfg: EvalConfig, paths: dict[str, str]) -> dict:
    """Base, SFT and SFT → DPO on the same held-out prompts: each model samples once (same seed),
    the judge compares the answers of each pair in ``COMPARISONS``, and the sampled KL of each
    policy to each of its references is estimated on the policy's own samples. Reward accuracy on
    held-out pairs is that of DPO's implicit reward β·log π/π_SFT, the one it was trained on (SFT
    has no preference objective to measure; skipping it saves four scoring passes). A model's log-probs
    of its own samples come with the sampling, so three scoring passes remain."""
    accelerator = Accelerator()
    autocast = eval_autocast(cfg, accelerator)
    tokenizer = load_tokenizer(paths["base"])
    models = {name: load_model(path).to(accelerator.device).eval() for name, path in paths.items()}
    prompts = read_prompts(cfg.prompts, cfg.num_prompts)
    prompt_ids = [encode_prompt(tokenizer, p, where)[-cfg.max_prompt_length:] for p, where in prompts]
    sampled = {name: sample_answers(cfg, m, tokenizer, prompt_ids, autocast, with_logps=True)
               for name, m in models.items()}
    answers = {name: a for name, (a, _) in sampled.items()}
    texts = {name: decode(tokenizer, a) for name, a in answers.items()}
    judge, questions = load_judge(cfg.judge), [prompt_text(p) for p, _ in prompts]
    report: dict = {"prompts": len(prompts), "mean_length": {n: statistics.fmean(map(len, a)) for n, a in answers.items()}}
    # (model, whose samples): each scoring pass once; a model's own samples were scored by sampling
    scored: dict[tuple[str, str], list[float]] = {(name, name): lp for name, (_, lp) in sampled.items()}

    def logps(model: str, samples: str) -> list[float]:
        if (model, samples) not in scored:
            scored[model, samples] = sequence_logps(models[model], prompt_ids, answers[samples],
                                                    tokenizer.pad_token_id, cfg.batch_size, autocast)
        return scored[model, samples]

    for policy, ref in COMPARISONS:
        judged, scores = judge_answers(judge, questions, texts[policy], texts[ref])
        report[f"{policy}_vs_{ref}"] = {**win_rate([o for o in judged if o is not None], cfg.seed),
                                        **kl_from_logps(logps(policy, policy), logps(ref, policy))}
        report.setdefault("mean_score", {}).update({policy: _mean(scores["policy"]), ref: _mean(scores["reference"])})
    report["dpo_vs_sft"].update(pair_metrics(cfg, models["dpo"], models["sft"], tokenizer, autocast, accelerator))
    write_report(Path(cfg.output), report, prompts, texts)
    return report


def _mean(scores: list[float | None]) -> float:
    return statistics.fmean(s for s in scores if s is not None)


STAGES = ("base", "sft", "dpo")


def table(r: dict) -> str:
    """One column per stage. A model compared with itself has win rate ½ and KL 0 by definition."""
    def wins(key: str) -> str:
        lo, hi = r[key]["win_rate_ci95"]
        return f"{r[key]['win_rate']:.0%} [{lo:.0%}, {hi:.0%}]"

    rows = [
        ("judge win rate vs base [95% CI]", "50% (itself)", wins("sft_vs_base"), wins("dpo_vs_base")),
        ("judge win rate vs SFT [95% CI]", "", "50% (itself)", wins("dpo_vs_sft")),
        ("mean judge score (−1…1)", *(f"{r['mean_score'][n]:+.2f}" for n in STAGES)),
        ("reward accuracy, held-out pairs", "", "", f"{r['dpo_vs_sft']['reward_accuracy']:.0%}"),
        ("sampled KL to base (nats)", "0", f"{r['sft_vs_base']['kl_sampled']:.2f}",
         f"{r['dpo_vs_base']['kl_sampled']:.2f}"),
        ("sampled KL to SFT (nats)", "", "0", f"{r['dpo_vs_sft']['kl_sampled']:.2f}"),
        ("mean answer length (tokens)", *(f"{r['mean_length'][n]:.0f}" for n in STAGES)),
    ]
    lines = [f"{r['prompts']} held-out prompts; reward accuracy: β·log π/π_SFT on {r['dpo_vs_sft']['pairs']} "
             "held-out pairs",
             f"{'':34s}{'base':>14s}{'SFT':>20s}{'SFT → DPO':>20s}"]
    lines += [f"{label:34s}{a:>14s}{b:>20s}{c:>20s}" for label, a, b, c in rows]
    return "\n".join(lines)

