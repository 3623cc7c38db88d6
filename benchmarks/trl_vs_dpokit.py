"""TRL's DPOTrainer and dpokit side by side: same model, same pairs in the same order, same
batch size, sequence limit and precision, each in its own subprocess.

    python benchmarks/trl_vs_dpokit.py [--dtype auto|fp32|bf16] [--steps 6] [--max-length 512]
                                       [--batch-size 4] [--grid] [--skip-trl]

TRL is an optional benchmark dependency (``pip install trl``), never one of dpokit's.

- Data: Anthropic HH harmless-base test split (``../shared/data``); the prompt is the shared
  text up to the last ``\\n\\nAssistant:``. A pair is *usable* when chosen and rejected share
  that prefix, differ, and tokenize to the same ids in both tools (TRL tokenizes
  prompt + completion + EOS and splits at the common prefix; dpokit tokenizes the parts) and
  fit ``--max-length`` whole, so neither tool truncates. The first ``batch × steps`` usable
  pairs are used, in the order of dpokit's seeded shuffle; TRL reads them in that order.
- Model: SmolLM2-135M-Instruct (``dpokit.policies.lm.load.embedded_smollm2``), full fine-tuning, β 0.1,
  AdamW, constant lr 5e-7, grad-norm clip 1.0, no gradient checkpointing.
- Time: wall and CPU time of each optimizer step, from the end of the previous optimizer step
  to the end of its own (one global optimizer hook for both tools: batching, forward, backward,
  update, per-step logging). Median over the steps after the first (warm-up). dpokit's reference log-probs are precomputed before training;
  that pass's time divided by the number of steps run is added to every dpokit step. TRL runs
  its reference forward inside each step. tokens/s = real tokens of the step (prompt + chosen +
  rejected, no padding, the prompt once) / step time, median over steps.
- Memory: peak RSS of each subprocess (``os.wait4`` rusage); on a GPU also torch's peak allocation.
- MFU: model FLOPs / step time / measured matmul peak. Model FLOPs count the useful work of a
  step once: the body's parameters N_body (all parameters less the vocabulary × hidden
  embedding, which is a lookup) cost 2 FLOPs per real token forward, the LM head 2·V·d per
  completion token (both tools run it only there), and causal attention 4·L·d per (query, key)
  pair of prompt+chosen and prompt+rejected (QKᵀ and AV); the policy does forward and backward
  (×3), the reference a forward (×1). The shared prompt is counted once, as a real token, so a
  tool that encodes it twice does work this count does not credit. The peak is the best of a
  few 2048³ matmuls in this process, in the run's dtype.
- Machine: the CPU model, the ISA flags that decide precision and speed (avx2, avx512_f,
  avx512_bf16, amx...), torch's kernel capability, the thread count and the fp32 and bf16
  matmul peaks are printed first and written into ``--json``: a figure means little without
  the machine it came from. ``--dtype auto`` (the default) is dpokit's own choice for the machine
  (bf16 where native, else fp32), and both tools then run in it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hh-harmless-base-test.jsonl.gz"
MARK = "\n\nAssistant:"
LR, BETA, SEED = 5e-7, 0.1, 0


# ----------------------------------------------------------------------------- data

def hh_pairs(path: Path):
    """(prompt, chosen, rejected) texts of each record whose two transcripts share the prompt."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            cut = rec["chosen"].rfind(MARK) + len(MARK)
            prompt = rec["chosen"][:cut]
            if cut > len(MARK) and rec["rejected"].startswith(prompt) and rec["chosen"] != rec["rejected"]:
                yield prompt, rec["chosen"][cut:], rec["rejected"][cut:]


def trl_ids(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """TRL 1.16's tokenization of a plain-text pair side: EOS text appended, prompt+completion
    tokenized together, the completion is what follows the common prefix."""
    p = tok(prompt)["input_ids"]
    full = tok(prompt + completion + tok.eos_token)["input_ids"]
    n = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
    return p[:n], full[n:]


def usable_pairs(tok, n: int, max_length: int, longest: bool = False) -> list[dict]:
    """The first ``n`` usable pairs within ``max_length`` (file order), or with ``longest`` the
    ``n`` longest ones, so a larger limit really brings longer sequences."""
    from dpokit.data import encode

    out = []
    for i, (prompt, chosen, rejected) in enumerate(hh_pairs(DATA)):
        mine = encode(tok, prompt, [chosen, rejected], f"hh:{i}")
        theirs = [trl_ids(tok, prompt, c) for c in (chosen, rejected)]
        if any(t != (mine[0], c) for t, c in zip(theirs, mine[1])):
            continue
        length = len(mine[0]) + max(map(len, mine[1]))
        if length > max_length:
            continue
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "length": length,
                    "tokens": len(mine[0]) + sum(map(len, mine[1])),
                    "completion_tokens": sum(map(len, mine[1])),
                    "attn_pairs": sum((len(mine[0]) + len(c)) ** 2 / 2 for c in mine[1])})
        if len(out) == n and not longest:
            return out
    if len(out) < n:
        raise SystemExit(f"only {len(out)} usable pairs within max_length {max_length}; {n} needed")
    return sorted(out, key=lambda p: -p["length"])[:n]


def dpokit_order(n: int) -> list[int]:
    from dpokit.train.loop import BatchStream

    return BatchStream(n, 1, 1, SEED)._order(0)


# ----------------------------------------------------------------------------- children

class StepClock:
    """Wall and CPU time between consecutive optimizer steps, the same hook for both tools: a
    step's interval runs from the end of the previous optimizer step to the end of its own, so
    it holds batching, forward, backward, clipping, the update and per-step logging. The first
    step (warm-up) has no interval. CPU time (all threads of the process) is less sensitive to
    other work on a shared machine than wall time."""

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.marks: list[tuple[float, float]] = []
        register_optimizer_step_post_hook(lambda *_: self.marks.append((time.perf_counter(), time.process_time())))

    def steps(self) -> dict:
        pairs = list(zip(self.marks, self.marks[1:]))
        return {"step_s": [b[0] - a[0] for a, b in pairs], "step_cpu_s": [b[1] - a[1] for a, b in pairs]}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    class InOrder(DPOTrainer):
        first_loss = None

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            if InOrder.first_loss is None:  # read now: TRL clears its metrics at every log
                InOrder.first_loss = float((loss[0] if isinstance(loss, tuple) else loss).detach())
                InOrder.first_logps = [self._metrics["train"][f"logps/{k}"][-1] for k in ("chosen", "rejected")]
            return loss

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    config = dict(output_dir=spec["tmp"] + "/trl", per_device_train_batch_size=spec["batch_size"],
                  max_length=spec["max_length"], beta=BETA, learning_rate=LR, lr_scheduler_type="constant",
                  max_steps=spec["steps"], logging_steps=1, report_to="none", save_strategy="no",
                  bf16=spec["dtype"] == "bf16", gradient_checkpointing=False, precompute_ref_log_probs=False,
                  max_grad_norm=1.0, seed=SEED, dataloader_num_workers=0, disable_tqdm=True,
                  use_cpu=not torch.cuda.is_available())
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in spec["pairs"]])
    trainer = InOrder(model=model, args=DPOConfig(**config), train_dataset=data)
    clock = StepClock()
    trainer.train()
    return {**clock.steps(), "loss0": InOrder.first_loss, "logps0": InOrder.first_logps, "total_s": time.perf_counter() - t0,
            "precompute_s": 0.0, "config": {k: v for k, v in config.items() if k != "output_dir"}}


def run_dpokit(spec: dict) -> dict:
    from dpokit.config import load_config
    from dpokit.train import train

    # spec["pairs"] is in reading order; dpokit shuffles its file with the same seeded permutation,
    # so the file holds them where that permutation reads them in this order
    pairs, order = spec["pairs"], dpokit_order(len(spec["pairs"]))
    in_file = [None] * len(pairs)
    for k, i in enumerate(order):
        in_file[i] = pairs[k]
    data = Path(spec["tmp"]) / "pairs.jsonl"
    data.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                            for p in in_file))
    out = Path(spec["tmp"]) / "dpokit"
    overrides = {"model.path": spec["model"], "data.train": str(data), "train.output": str(out),
                 "train.max_steps": spec["steps"], "train.batch_size": spec["batch_size"],
                 "data.max_length": spec["max_length"], "data.max_prompt_length": spec["max_length"] - 1,
                 "train.bf16": spec["dtype"] == "bf16", "train.lr": LR, "train.scheduler": "constant",
                 "loss.beta": BETA, "train.seed": SEED, "train.progress": False,
                 "train.ref_cache_dir": str(Path(spec["tmp"]) / "refcache"), **spec.get("dpokit", {})}
    messages = []
    t0, clock = time.perf_counter(), StepClock()
    train(load_config(None, overrides), log=messages.append)
    total = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    pre = [float(m.split(" computed in ")[1].split(" s")[0]) for m in messages if " computed in " in m]
    return {**clock.steps(), "loss0": lines[0]["loss"],
            "logps0": [lines[0]["logps/chosen"], lines[0]["logps/rejected"]],
            "total_s": total, "precompute_s": sum(pre), "config": overrides}


def child(tool: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = (run_trl if tool == "trl" else run_dpokit)(spec)
    import torch

    if torch.cuda.is_available():
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    Path(spec["tmp"], f"result-{tool}.json").write_text(json.dumps(result))


def measure(tool: str, spec: dict) -> dict | None:
    """Run one tool in a subprocess; its result with its own peak RSS, or {"failed": why}."""
    spec_path = Path(spec["tmp"]) / f"spec-{tool}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, __file__, "--child", tool, "--spec", str(spec_path)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    over = _watch_memory(proc, spec["rss_limit_gb"])
    _, status, usage = os.wait4(proc.pid, 0)
    result_path = Path(spec["tmp"]) / f"result-{tool}.json"
    if over.is_set():
        print(f"[{tool}] stopped: resident memory passed --rss-limit {spec['rss_limit_gb']} GB", file=sys.stderr)
        return {"failed": f"> {spec['rss_limit_gb']} GB RSS"}
    if status != 0 or not result_path.is_file():
        print(f"[{tool}] failed (wait status {status})", file=sys.stderr)
        return {"failed": f"exit status {status}"}
    result = json.loads(result_path.read_text())
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


def _watch_memory(proc: subprocess.Popen, limit_gb: float) -> threading.Event:
    """Kill ``proc`` when its resident memory passes ``limit_gb``, so a setting that does not fit
    is reported as such instead of pushing the whole machine into swap or the OOM killer."""
    over = threading.Event()

    def poll():
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                kib = next(int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmRSS"))
            except (OSError, StopIteration):
                kib = 0
            if kib * 1024 > limit_gb * 1e9:
                over.set()
                proc.kill()
                return
            time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return over


# ----------------------------------------------------------------------------- figures

def machine() -> dict:
    """The machine the figures come from, with its matmul peaks (2048³, best of 5; bf16 at 512³
    where it is emulated, as a 2048³ one would take minutes)."""
    import torch

    from dpokit.precision import cpu_info, matmul_flops, native_on_cpu

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", **cpu_info(),
            "load_average": os.getloadavg()}
    bf16_n = 2048 if dev == "cuda" or native_on_cpu("bf16") else 512
    info["matmul_gflops"] = {"fp32": matmul_flops("fp32", 2048, 5, dev) / 1e9,
                             "bf16": matmul_flops("bf16", bf16_n, 5 if bf16_n == 2048 else 2, dev) / 1e9}
    return info


def step_flops(batch: list[dict], info: dict) -> float:
    """Model FLOPs of one step on ``batch`` (see the module docstring): ×4 = policy forward and
    backward (×3) + reference forward (×1)."""
    tokens = sum(p["tokens"] for p in batch)
    completions = sum(p["completion_tokens"] for p in batch)
    attn = sum(p["attn_pairs"] for p in batch)
    forward = 2 * info["body_params"] * tokens + 2 * info["head_params"] * completions \
        + 4 * info["layers"] * info["hidden"] * attn
    return 4 * forward


def summarise(result: dict, pairs: list[dict], spec: dict, model_info: dict, peak: float) -> dict:
    """Medians over the timed steps (all but the first). dpokit's reference precompute (wall
    seconds) is spread evenly over the steps run; in CPU time it is counted at the run's median
    CPU/wall ratio."""
    b, wall, cpu = spec["batch_size"], result["step_s"], result["step_cpu_s"]
    ratio = statistics.median(c / w for c, w in zip(cpu, wall))
    extra = result["precompute_s"] / spec["steps"]
    tok, tok_cpu, flops = [], [], []
    for i, (w, c) in enumerate(zip(wall, cpu), start=1):  # interval i is step i; step 0 is the warm-up
        batch = pairs[i * b:(i + 1) * b]
        tokens = sum(p["tokens"] for p in batch)
        tok.append(tokens / (w + extra))
        tok_cpu.append(tokens / (c + extra * ratio))
        flops.append(step_flops(batch, model_info) / (w + extra))
    step = statistics.median(wall) + extra
    return {"tokens_per_s": statistics.median(tok), "tokens_per_cpu_s": statistics.median(tok_cpu),
            "pairs_per_s": b / step, "step_s": step, "step_cpu_s": statistics.median(cpu) + extra * ratio,
            "mfu": statistics.median(flops) / peak, "peak_rss_gb": result["peak_rss_bytes"] / 1e9,
            "gpu_peak_gb": result.get("gpu_peak_bytes", 0) / 1e9 or None, "loss0": result["loss0"],
            "logps0": result["logps0"], "precompute_s": result["precompute_s"], "total_s": result["total_s"],
            "timed_steps": len(wall)}


def model_info(path: str) -> dict:
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    lookups = embed.numel() + (0 if head is embed else head.numel())
    return {"params": params, "body_params": params - lookups, "head_params": head.numel(),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}


def one_setting(args, max_length: int, batch: int, tok, info: dict, peak: float) -> dict:
    n = batch * args.steps
    pairs = usable_pairs(tok, n, max_length, args.longest)
    pairs = [pairs[i] for i in dpokit_order(n)]  # the order dpokit's seeded shuffle reads them in
    out = {"max_length": max_length, "batch_size": batch, "dtype": args.dtype, "steps": args.steps,
           "pairs": n, "tokens": sum(p["tokens"] for p in pairs), "longest": max(p["length"] for p in pairs),
           "mean_length": sum(p["length"] for p in pairs) / n}
    for tool in ([] if args.skip_trl else ["trl"]) + ["dpokit"]:
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"model": args.model, "pairs": pairs, "steps": args.steps, "batch_size": batch,
                    "max_length": max_length, "dtype": args.dtype, "tmp": tmp, "rss_limit_gb": args.rss_limit}
            result = measure(tool, spec)
        out[tool] = result if "failed" in result else summarise(result, pairs, spec, info, peak)
        if "config" in result:
            out[tool + "_config"] = result["config"]
        print(f"[{tool}] L={max_length} B={batch} {args.dtype}: {out[tool]}  load {os.getloadavg()}", flush=True)
    return out


def print_table(results: list[dict], host: dict) -> None:
    print(f"\n{host['cpu']} ({host['torch_capability']}; {' '.join(host['flags'])}), {host['threads']} threads, "
          f"matmul fp32 {host['matmul_gflops']['fp32']:.0f} / bf16 {host['matmul_gflops']['bf16']:.1f} GFLOP/s, "
          f"dtype {results[0]['dtype']}\n")
    print("| max_length | batch | length mean/max | tool | tokens/s | tokens/CPU-s | pairs/s | s/step | CPU-s/step "
          "| peak RSS GB | MFU | step-0 loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        size = f"{r['mean_length']:.0f}/{r['longest']}"
        for tool in ("trl", "dpokit"):
            m = r.get(tool)
            if m is None or "failed" in m:
                if m:
                    print(f"| {r['max_length']} | {r['batch_size']} | {size} | {tool} | failed: {m['failed']} | | | | | | | |")
                continue
            print(f"| {r['max_length']} | {r['batch_size']} | {size} | {tool} | {m['tokens_per_s']:.0f} | "
                  f"{m['tokens_per_cpu_s']:.0f} | {m['pairs_per_s']:.3f} | {m['step_s']:.2f} | {m['step_cpu_s']:.2f} | "
                  f"{m['peak_rss_gb']:.2f} | {m['mfu']:.1%} | {m['loss0']:.6f} |")
        if all(r.get(t) and "failed" not in r[t] for t in ("trl", "dpokit")):
            t, d = r["trl"], r["dpokit"]
            gap = max(abs(a - b) for a, b in zip(d["logps0"], t["logps0"]))
            print(f"|  |  |  | dpokit / TRL | ×{d['tokens_per_s'] / t['tokens_per_s']:.2f} | "
                  f"×{d['tokens_per_cpu_s'] / t['tokens_per_cpu_s']:.2f} | | | | "
                  f"×{d['peak_rss_gb'] / t['peak_rss_gb']:.2f} | | Δ {abs(d['loss0'] - t['loss0']):.1e} "
                  f"(mean log π(y|x) Δ {gap:.1e}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                    help="auto: bf16 where the machine runs it natively, else fp32 (dpokit's own choice)")
    ap.add_argument("--steps", type=int, default=6, help="steps run; the first is warm-up (≥ 6 for 5 timed)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grid", action="store_true", help="max_length 256/512/1024/2048 × batch 1/4/16")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--longest", action="store_true",
                    help="take the longest usable pairs within each max_length instead of the first ones")
    ap.add_argument("--lengths", default="256,512,1024,2048", help="max_length values of --grid")
    ap.add_argument("--batches", default="1,4,16", help="batch sizes of --grid")
    ap.add_argument("--model", default=None, help="HF model folder (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--rss-limit", type=float, default=16.0,
                    help="GB of resident memory at which a tool's run is stopped and reported as not fitting")
    ap.add_argument("--child", choices=("trl", "dpokit"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.spec)
    if not args.skip_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("TRL is not installed: `pip install trl` (a benchmark dependency only), "
                             "or pass --skip-trl") from None
    if args.steps < 2:
        raise SystemExit("--steps must be ≥ 2 (the first is warm-up)")
    from dpokit.policies.lm.load import embedded_smollm2, load_tokenizer

    from dpokit.precision import resolve

    args.model = args.model or str(embedded_smollm2())
    tok, info = load_tokenizer(args.model), model_info(args.model)
    host = machine()
    precision = resolve(args.dtype, "cuda" if host["device"] != "cpu" else "cpu")
    args.dtype = precision.name
    peak = host["matmul_gflops"][args.dtype] * 1e9
    print(f"machine: {host['device']}, {host['cpu']}; flags {' '.join(host['flags'])}; torch "
          f"{host['torch']} kernels {host['torch_capability']}, {host['threads']} threads; matmul peak fp32 "
          f"{host['matmul_gflops']['fp32']:.0f}, bf16 {host['matmul_gflops']['bf16']:.1f} GFLOP/s; "
          f"load {host['load_average']}", flush=True)
    print(f"dtype: {precision.name} ({precision.reason}); params {info['params']:,}", flush=True)
    settings = [(int(L), int(B)) for L in args.lengths.split(",") for B in args.batches.split(",")] if args.grid else \
        [(args.max_length, args.batch_size)]
    results = []
    for L, B in settings:
        results.append(one_setting(args, L, B, tok, info, peak))
        if args.json:  # after every setting: a long grid keeps what it measured if stopped
            Path(args.json).write_text(json.dumps({"machine": host, "dtype": args.dtype, "peak_flops": peak,
                                                   "results": results}, indent=1))
    print_table(results, host)


if __name__ == "__main__":
    main()
