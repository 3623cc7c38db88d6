"""Federated DPO on a real pretrained model: the embedded SmolLM2-135M-Instruct with a LoRA adapter,
clients holding disjoint shares of dpokit's "reviews" task (dpokit/tasks/reviews_data: prefer the
warm review of a subject over the cold one of the same shape), each scoring the global adapter on its
own share of the task's held-out pairs after every round. Round 0 is the base (the adapter's B = 0):
its implicit reward β·log π/π_base is 0 on every pair, so its reward accuracy is 0 (a tie counts
wrong) and its loss ln 2.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 python examples/federated_smollm2.py --output /tmp/fed-smollm2 \
        --clients 2 --rounds 2 --local-steps 6 --secure-aggregation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpokit.config import load_config  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from dpokit.federated.worker import adapter_metrics  # noqa: E402
from dpokit.tasks.reviews import DEFAULT_DIR  # noqa: E402


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    return f"{name} ({', '.join(sorted(flags & {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16'}))})"


def shares(file: Path, n: int, each: int, out: Path, stem: str) -> list[Path]:
    """``n`` disjoint shares of ``each`` records of ``file``, written under ``out`` (never the repo)."""
    rows = file.read_text(encoding="utf-8").splitlines()
    if len(rows) < n * each:
        raise SystemExit(f"{file} has {len(rows)} records, fewer than {n} x {each}")
    paths = []
    for c in range(n):
        paths.append(out / f"{stem}-{c}.jsonl")
        paths[-1].write_text("\n".join(rows[c * each:(c + 1) * each]) + "\n", encoding="utf-8")
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="/tmp/fed-smollm2")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--per-client", type=int, default=48)
    p.add_argument("--eval-per-client", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--secure-aggregation", action="store_true")
    p.add_argument("--cpus", type=int, default=2)
    a = p.parse_args()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    train = shares(DEFAULT_DIR / "train.jsonl", a.clients, a.per_client, out, "client")
    held = shares(DEFAULT_DIR / "eval.jsonl", a.clients, a.eval_per_client, out, "held-out")
    started = time.perf_counter()
    cfg = load_config(None, {"model.path": "builtin:smollm2-135m-instruct", "lora.r": 8, "lora.alpha": 16,
                             "train.batch_size": a.batch_size, "train.lr": a.lr, "train.scheduler": "constant",
                             "train.output": str(out / "run"), "train.registry": str(out / "registry"),
                             "data.max_length": 128, "data.max_prompt_length": 48,
                             "federated.clients": ",".join(map(str, train)),
                             "federated.client_eval": ",".join(map(str, held)), "federated.rounds": a.rounds,
                             "federated.local_steps": a.local_steps, "federated.cpus": a.cpus,
                             "federated.secure_aggregation": a.secure_aggregation,
                             "federated.secagg_max_weight": float(a.per_client)}, root=FederatedConfig)
    result = run_federated(cfg)
    fed_minutes = (time.perf_counter() - started) / 60
    base = []  # round 0, the base, scored by the same code on the same held-out shares
    for c, h in enumerate(held):
        local = cfg.local_config(str(h), None, str(out / f"base-eval-{c}"), 0,
                                 str(out / "run" / "global" / "round-0" / "adapter_model.safetensors"), 0.0)
        base.append(adapter_metrics(local))
    n = sum(m["records"] for m in base)
    rows = [(0, *(sum(m["records"] * m[k] for m in base) / n
                  for k in ("rewards/accuracies", "rewards/margins", "loss")), "-")]
    for e in result.rounds:
        ev, fit = e.get("eval", {}), e.get("fit", {})
        rows.append((e["round"], ev.get("reward_accuracy"), ev.get("reward_margin"), ev.get("loss"),
                     f"{fit.get('reward_accuracy', float('nan')):.3f}"))
    print(f"\n{a.clients} clients x {a.per_client} pairs, {a.eval_per_client} held-out pairs each; {a.rounds} rounds of "
          f"{a.local_steps} local steps of {a.batch_size} pairs; secure aggregation {a.secure_aggregation}; "
          f"{cpu_name()}; federated run {fed_minutes:.1f} min")
    print("| round | held-out reward accuracy | held-out margin | held-out loss | clients' local training accuracy |")
    print("|---|---|---|---|---|")
    for r, acc, margin, loss, local_acc in rows:
        print(f"| {r}{' (base)' if r == 0 else ''} | {acc:.1%} | {margin:.3f} | {loss:.3f} | {local_acc} |")
    (out / "evidence.json").write_text(json.dumps({"rows": rows, "cpu": cpu_name(), "minutes": fed_minutes,
                                                   "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
