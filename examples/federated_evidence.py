"""Federated DPO against centralised training on the same preferences, with and without DP.

The learnable task of tests/helpers/task.py: each prompt names one of 8 topics, and the preferred
answer uses that topic's word group. Four clients each hold two topics only (client c: topics 2c
and 2c+1: a non-IID split, no client sees the others' rules), 64 training pairs each. Arms, all a
LoRA adapter (r 8) on the same tiny random Llama, scored on the same 64 held-out pairs of all
8 topics (reward accuracy of β·log π/π_base, ties wrong):

- ``centralised``: the 256 pooled pairs, as many optimizer steps of the same batch as all clients'
  local steps together (rounds × clients × local steps);
- ``one client alone``: client 0's pairs only, the same steps as one client's rounds together;
- ``federated``: FedAvg over the 4 clients, every client each round, on Flower's simulation engine;
- ``federated + DP``: the same with each update clipped to norm C on the client and Gaussian noise
  of multiplier z on the mean, with each client's (ε, δ) after the last round.

    PYTHONPATH=. OMP_NUM_THREADS=1 python examples/federated_evidence.py --output runs/fed-evidence
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dpokit.config import load_config  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from dpokit.federated.worker import adapter_metrics  # noqa: E402
from dpokit.policies.lm.tiny import write_tiny_model  # noqa: E402
from dpokit.train import train  # noqa: E402
from helpers.task import pairs, write  # noqa: E402

CLIENTS = 4


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def common(a) -> dict:
    return {"lora.enabled": True, "lora.r": 8, "lora.alpha": 16, "train.batch_size": a.batch_size,
            "train.lr": a.lr, "train.scheduler": "constant", "train.progress": False, "data.max_length": 64,
            "data.max_prompt_length": 32, "train.registry": ""}


def held_out_accuracy(a, base: Path, adapter: Path, held: Path, out: Path) -> float:
    cfg = load_config(None, {**common(a), "model.path": str(base), "data.train": str(held),
                             "lora.init": str(adapter), "train.output": str(out)})
    return adapter_metrics(cfg)["rewards/accuracies"]


def local_run(a, base: Path, data: Path, steps: int, out: Path) -> Path:
    train(load_config(None, {**common(a), "model.path": str(base), "data.train": str(data), "train.max_steps": steps,
                             "train.output": str(out)}))
    return out / "final"


def federated(a, base: Path, files: list[Path], out: Path, clip: float = 0.0, noise: float = 0.0):
    cfg = load_config(None, {**common(a), "model.path": str(base), "train.output": str(out),
                             "federated.clients": ",".join(map(str, files)), "federated.rounds": a.rounds,
                             "federated.local_steps": a.local_steps, "federated.dp_clip": clip,
                             "federated.dp_noise": noise, "federated.cpus": a.cpus}, root=FederatedConfig)
    return run_federated(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/fed-evidence")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--per-client", type=int, default=64)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--dp-noise", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--cpus", type=int, default=2)
    a = p.parse_args()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    base = write_tiny_model(out / "tiny-model")
    pool = pairs(CLIENTS * a.per_client * 2, seed=1)  # topic i % 8; enough for each client's share
    files = [write(out / f"client-{c}.jsonl", [r for i, r in enumerate(pool) if (i % 8) // 2 == c][:a.per_client])
             for c in range(CLIENTS)]
    pooled = write(out / "pooled.jsonl", [json.loads(line) for f in files for line in f.read_text().splitlines()])
    held = write(out / "held-out.jsonl", pairs(64, seed=99))
    rows, steps = [], a.rounds * CLIENTS * a.local_steps
    timed = time.perf_counter()
    rows.append(("centralised (pooled data)", steps, held_out_accuracy(
        a, base, local_run(a, base, pooled, steps, out / "central"), held, out / "eval-central"), "-"))
    rows.append(("client 0 alone (2 topics)", a.rounds * a.local_steps, held_out_accuracy(
        a, base, local_run(a, base, files[0], a.rounds * a.local_steps, out / "alone"), held, out / "eval-alone"), "-"))
    fed = federated(a, base, files, out / "federated")
    rows.append((f"federated FedAvg, {a.rounds} rounds", steps,
                 held_out_accuracy(a, base, fed.final, held, out / "eval-fed"), "-"))
    for z in a.dp_noise:
        dp = federated(a, base, files, out / f"federated-dp-{z}", a.dp_clip, z)
        eps = next(iter(dp.rounds[-1]["privacy"]["clients"].values()))
        rows.append((f"federated + DP (C {a.dp_clip}, z {z})", steps,
                     held_out_accuracy(a, base, dp.final, held, out / f"eval-dp-{z}"),
                     f"ε = {eps['epsilon']:.1f} (δ = {eps['delta']:g})"))
    minutes = (time.perf_counter() - timed) / 60
    print(f"\n{CLIENTS} clients x {a.per_client} pairs (client c: topics 2c, 2c+1), 64 held-out pairs of 8 topics; "
          f"{cpu_name()}, {minutes:.1f} min")
    print("| arm | optimizer steps in all | held-out reward accuracy | privacy per client |\n|---|---|---|---|")
    for name, n, acc, eps in rows:
        print(f"| {name} | {n} | {acc:.1%} | {eps} |")
    (out / "evidence.json").write_text(json.dumps({"rows": rows, "cpu": cpu_name(), "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
