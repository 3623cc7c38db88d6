"""Online rounds against one offline round on the same pair budget, over seeds (a script, not a test).

The arms (tests/helpers/evidence.py): ``online`` (R rounds of P prompts, each sampled from the
current policy, reference fixed), ``online-sdpo`` (reference = each round's starting policy),
``offline`` (one round sampled from the initial model, cut to the online arm's pair count),
``offline-long`` (the same pairs, R times the epochs) and ``offline-rounds`` (R rounds that each
sample the initial model: the control). All share the judge, K, loss, optimizer settings, epochs
and seed, and are evaluated against the initial model on the same held-out prompts. docs/online.md
has the results.

Tiny random model (a new one per seed), judge ``helpers.judges:count_k``:

    PYTHONPATH=.:tests python benchmarks/online_vs_offline.py --seeds 0-9 \
        --arms online,online-sdpo,offline,offline-long,offline-rounds

The embedded SmolLM2-135M-Instruct with the judge ``helpers.judges:count_exclamations``, one seed
(about 10 minutes on 2 CPU cores):

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests python benchmarks/online_vs_offline.py --preset smollm2 --seeds 0

Prints each arm's pairs, optimizer steps, final win rate over the initial model with its 95%
bootstrap interval, mean judge score and sampled KL, then the margins over ``offline`` per seed
and in the mean; writes them all to ``OUTPUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

from dpokit.policies.lm.load import BUILTIN_SMOLLM2, embedded_smollm2
from dpokit.policies.lm.tiny import write_tiny_model
from helpers.evidence import ARMS, Budget, run_arms, summary

TOPICS = ("the moon", "honey bees", "volcanoes", "the Roman empire", "rainbows", "coffee", "penguins", "the ocean",
          "bicycles", "chess", "the human heart", "thunderstorms", "pyramids", "tea", "elephants", "the internet",
          "photosynthesis", "gold", "the violin", "deserts", "tomatoes", "glaciers", "owls", "bread", "the sun",
          "wolves", "paper", "trains", "mushrooms", "islands", "snow", "cotton", "dolphins", "the piano",
          "earthquakes", "rice", "lighthouses", "ants", "the printing press", "salt", "bridges", "jazz",
          "butterflies", "clocks", "caves", "cheese", "windmills", "sharks", "maps", "rivers", "olives", "comets",
          "libraries", "frogs", "glass", "kites", "whales", "soap", "the Great Wall", "bamboo", "lightning", "camels",
          "volleyball", "oak trees", "candles", "the Nile", "parrots", "umbrellas", "the alphabet", "apples", "tigers",
          "football", "the compass", "spiders", "wool", "rockets", "the desert fox", "chocolate", "the telescope",
          "horses", "sand", "the guitar", "vaccines", "the Arctic", "lemons", "castles", "balloons", "fireflies")
PRESETS = {
    "tiny": Budget(),
    # Exclamations are rare in SmolLM2's answers about everyday topics, and every further one counts.
    "smollm2": Budget(judge="helpers.judges:count_exclamations", rounds=3, prompts_per_round=8, samples=8,
                      max_new_tokens=32, beta=0.1, lr=2e-5, epochs=2, batch_size=4, eval_prompts=32,
                      max_length=128, max_prompt_length=64),
}


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = map(int, text.split("-"))
        return list(range(lo, hi + 1))
    return [int(s) for s in text.split(",")]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--model", help=f"model folder or {BUILTIN_SMOLLM2} (tiny: a new random model per seed)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-9 or 0,3,5")
    p.add_argument("--arms", default="online,offline", help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--output", default="runs/online_vs_offline")
    for f in fields(Budget):  # every shared setting, defaulting to the preset's
        boolean = isinstance(f.default, bool)
        kind = {"action": argparse.BooleanOptionalAction} if boolean else {"type": type(f.default)}
        p.add_argument(f"--{f.name.replace('_', '-')}", **kind, help=f"tiny preset: {f.default}")
    return p.parse_args()


def arm_line(seed: int, arm: str, s: dict) -> str:
    lo, hi = s["ci95"]
    score = f"score {s['score']:.2f} (initial {s['score_initial']:.2f})" if s["score"] is not None else ""
    return (f"seed {seed} {arm:12s} {s['pairs']:3d} pairs {s['steps']:3d} steps  win rate {s['win_rate']:.3f} "
            f"[{lo:.3f}, {hi:.3f}]  rounds {s['per_round']}  {score}  KL {s['kl']:.2f}  length {s['length']:.1f}")


def print_margins(results: dict[int, dict[str, dict]], arms: list[str]) -> None:
    for arm in (a for a in arms if a != "offline"):
        margins = [r[arm]["win_rate"] - r["offline"]["win_rate"] for r in results.values()]
        ahead = sum(m > 0 for m in margins)
        print(f"{arm} − offline: mean {statistics.fmean(margins):+.3f}, ahead in {ahead} of {len(margins)} seeds "
              f"({', '.join(f'{m:+.3f}' for m in margins)})")
    for arm in arms:
        print(f"{arm:12s} mean win rate {statistics.fmean(r[arm]['win_rate'] for r in results.values()):.3f}")


def main() -> None:
    args = parse_args()
    budget = replace(PRESETS[args.preset], **{f.name: getattr(args, f.name) for f in fields(Budget)
                                               if getattr(args, f.name) is not None})
    arms = args.arms.split(",")
    out = Path(args.output)
    prompts = held = None
    if args.preset == "smollm2":
        n = 2 * budget.rounds * budget.prompts_per_round
        prompts, held = [f"Tell me about {t}." for t in TOPICS[:n]], [f"Tell me about {t}." for t in TOPICS[n:]]
        budget = replace(budget, eval_prompts=min(budget.eval_prompts, len(held)))
    print(f"budget: {budget}")
    results: dict[int, dict[str, dict]] = {}
    for seed in parse_seeds(args.seeds):
        start = time.perf_counter()
        model = args.model or (str(embedded_smollm2()) if args.preset == "smollm2"
                               else str(write_tiny_model(out / f"model-{seed}", seed=seed)))
        runs = run_arms(model, out / f"seed-{seed}", budget, seed, arms, prompts, held)
        results[seed] = {arm: summary(entries) for arm, entries in runs.items()}
        for arm in arms:
            print(arm_line(seed, arm, results[seed][arm]), flush=True)
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if "offline" in arms:
        print_margins(results, arms)
    (out / "results.json").write_text(json.dumps({"budget": budget.__dict__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
