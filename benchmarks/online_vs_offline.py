"""Online rounds against one offline round on the same number of pairs (a script, not a test).

Online: ``--rounds`` rounds, each sampling K answers for P fresh prompts from the current policy.
Offline: one round sampling K answers for rounds·P prompts from the initial model. Both pair best
against worst, train one epoch (so the same number of optimizer steps up to ties), and are
evaluated against the initial model on the same held-out prompts with the same seed.

    PYTHONPATH=.:tests python benchmarks/online_vs_offline.py --prompts 8 --lr 3e-3 --seed 0

The model is the tiny random one and the judge ``tests/online_judges.py:count_e`` unless
``--model``/``--judge`` name others. Prints pairs, win rate, mean judge score and KL per round.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dpokit.config import load_config
from dpokit.online import OnlineConfig, online
from dpokit.tiny import write_tiny_model


def write_prompts(path: Path, n: int, start: int) -> Path:
    with path.open("w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about thing {i}"}]}) + "\n")
    return path


def run(args, model: str, name: str, rounds: int, per_round: int) -> list[dict]:
    out = Path(args.output)
    cfg = load_config(None, {
        "model.path": model, "train.output": str(out / name), "online.prompts": str(out / "prompts.jsonl"),
        "online.eval_prompts": str(out / "held.jsonl"), "online.judge": args.judge, "online.rounds": rounds,
        "online.samples_per_prompt": args.samples, "online.prompts_per_round": per_round,
        "online.max_new_tokens": args.max_new_tokens, "online.generation_batch_size": 64, "train.lr": args.lr,
        "train.batch_size": 4, "loss.beta": args.beta, "train.seed": args.seed, "train.progress": False,
        "train.ref": "copy", "data.max_length": 96, "data.max_prompt_length": 32}, root=OnlineConfig)
    return online(cfg, log=lambda *_: None).rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: a tiny random model)")
    p.add_argument("--judge", default="online_judges:count_e")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8, help="prompts per online round")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--output", default="runs/online_vs_offline")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(write_tiny_model(out / "base", seed=0))
    write_prompts(out / "prompts.jsonl", args.rounds * args.prompts, 0)
    write_prompts(out / "held.jsonl", args.eval_prompts, 10_000)
    for name, rounds, per in (("online", args.rounds, args.prompts), ("offline", 1, args.rounds * args.prompts)):
        start = time.perf_counter()
        for e in run(args, model, name, rounds, per):
            lo, hi = e["win_rate_ci95"]
            print(f"{name:8s} round {e['round']}: {e['pairs']:3d} pairs, win rate {e['win_rate']:.3f} "
                  f"[{lo:.3f}, {hi:.3f}], score {e.get('mean_score_policy', float('nan')):.3f} "
                  f"(initial {e.get('mean_score_reference', float('nan')):.3f}), KL {e['kl_sampled']:.3f}")
        print(f"{name:8s} {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
