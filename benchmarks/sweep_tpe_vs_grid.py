"""A 12-trial TPE search against the 3 × 4 grid over β and the learning rate (a script, not a test).

Both are ``dpokit sweep`` studies on the tiny random model, with the same base run (DPO, 8 steps
of 4 pairs, held-out accuracy every 2 steps for the median pruner), the same ranges and the same
objective: the win rate over the starting model under the programmatic judge
``helpers.judges:count_e`` (more letters ``e`` win) on 16 held-out prompts. The training pairs
prefer answers made of words rich in ``e`` over answers with none, so DPO can move the policy
towards what the judge rewards, and how far depends on β and the learning rate.

    PYTHONPATH=.:tests python benchmarks/sweep_tpe_vs_grid.py --output runs/sweep-bench

Prints, for each sampler, the best trial's win rate, KL and settings, the trials that ran to the
end (not pruned), the trial at which the best was first reached, and the seconds taken; writes
them to ``OUTPUT/results.json``. docs/sweep.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml

from dpokit.policies.lm.tiny import write_tiny_model
from dpokit.sweep import SweepSettings, sweep

E_WORDS = "three trees seem green here we see keen geese sleep free".split()
PLAIN = "a cup of hot cocoa on a cold day with a spoon at noon".split()
GRID = {"loss.beta": [0.03, 0.1, 0.3], "train.lr": [1e-4, 1e-3, 1e-2, 3e-2]}


def write_pairs(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = f"Say something about item {i}."
            rec = {"prompt": [{"role": "user", "content": prompt}],
                   "chosen": [{"role": "assistant", "content": " ".join(rng.choices(E_WORDS, k=rng.randint(3, 8)))}],
                   "rejected": [{"role": "assistant", "content": " ".join(rng.choices(PLAIN, k=rng.randint(3, 8)))}]}
            f.write(json.dumps(rec) + "\n")


def setup(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(root / "tiny-model", seed=0)
    write_pairs(root / "train.jsonl", 64, seed=0)
    write_pairs(root / "heldout.jsonl", 16, seed=1)
    base = {"model": {"path": str(model)},
            "data": {"train": str(root / "train.jsonl"), "eval": str(root / "heldout.jsonl"), "max_length": 64,
                     "max_prompt_length": 32},
            "train": {"max_steps": 8, "eval_steps": 2, "batch_size": 4, "progress": False, "dtype": "fp32",
                      "ref_cache_dir": str(root / "refcache")}}
    (root / "base.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
    space = {k: {"low": v[0], "high": v[-1], "log": True, "grid": v} for k, v in GRID.items()}
    (root / "space.yaml").write_text(yaml.safe_dump(space), encoding="utf-8")
    (root / "eval.yaml").write_text("max_new_tokens: 16\nnum_prompts: 16\nbatch_size: 16\ndtype: fp32\n",
                                    encoding="utf-8")


def run(root: Path, sampler: str, trials: int) -> dict:
    import optuna

    s = SweepSettings(str(root / "base.yaml"), str(root / "space.yaml"), str(root / sampler), trials, ["win_rate"],
                      sampler, eval_config=str(root / "eval.yaml"), eval_overrides={"judge": "helpers.judges:count_e"})
    start = time.perf_counter()
    sweep(s, log=lambda *_: None)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=s.name, storage=s.storage_url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: (t.value, -t.user_attrs["kl"], -t.number))
    first = min(t.number for t in done if t.value == best.value)
    return {"sampler": sampler, "trials": len(study.trials), "full_trials": len(done),
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials), "best_win_rate": best.value,
            "best_kl": best.user_attrs["kl"], "best_params": best.params, "best_first_reached_at_trial": first,
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/sweep-bench", help="folder for the two studies")
    args = parser.parse_args()
    root = Path(args.output)
    setup(root)
    results = [run(root, "tpe", 12), run(root, "grid", 12)]
    for r in results:
        print(f"{r['sampler']:5s} best win rate {r['best_win_rate']:.1%} (KL {r['best_kl']:.2f}) at "
              f"{r['best_params']}, first reached at trial {r['best_first_reached_at_trial']}; "
              f"{r['full_trials']} full trials, {r['pruned']} pruned, {r['seconds']} s")
    (root / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
