"""Data pipeline figures (a script that prints them, not a test):

1. read + clean + tokenize of 100,000 generated pairs (what a trainer's data loading does,
   without the cache), in pairs per second and CPU time per pair, for plain-text pairs and
   for chat-message pairs rendered with the chat template, with the SmolLM2 tokenizer when it
   has been converted (``dpokit quickstart`` does it), else the tiny tokenizer shipped with
   dpokit. On a shared machine the wall time depends on the load, printed beside it;
2. peak memory (RSS) of ``dpokit data convert`` streaming 1,000,000 generated records, run in
   a subprocess and read with ``getrusage(RUSAGE_CHILDREN)``.

    python benchmarks/data_pipeline.py [--pairs 100000] [--records 1000000]

Every step of the default cleaning runs (duplicates, conflicts, leaks...); the generated data
holds some duplicates, conflicts and empty answers so that each step has work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("good bad film food warm cold bright dull quick slow lovely awful kind rude clean messy story "
         "music actors plot ending scene light sound price service coffee table window garden").split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def write_pairs(path: Path, n: int, chat: bool, seed: int = 0) -> None:
    """n pairs; about 1% repeat an earlier one, 0.5% reverse one, 0.2% have an empty answer."""
    rng = random.Random(seed)
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.01:
                rec = rng.choice(recent)
            elif recent and roll < 0.015:
                old = rng.choice(recent)
                rec = {**old, "chosen": old["rejected"], "rejected": old["chosen"]}
            else:
                prompt = f"Review {i}: {sentence(rng, 8, 40)}"
                chosen, rejected = sentence(rng, 10, 60), "" if roll < 0.017 else sentence(rng, 10, 60)
                if chat:
                    rec = {"prompt": [{"role": "user", "content": prompt}],
                           "chosen": [{"role": "assistant", "content": chosen}],
                           "rejected": [{"role": "assistant", "content": rejected}]}
                else:
                    rec = {"prompt": prompt + "\n", "chosen": " " + chosen, "rejected": " " + rejected}
                recent = (recent + [rec])[-1000:]
            f.write(json.dumps(rec) + "\n")


def tokenizer():
    from transformers import AutoTokenizer

    from dpokit.policies.lm.tiny import tiny_tokenizer

    smol = Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit")) / "models" / "smollm2-135m-instruct"
    if smol.is_dir():
        return "SmolLM2-135M-Instruct", AutoTokenizer.from_pretrained(smol, local_files_only=True)
    return "dpokit tiny tokenizer", tiny_tokenizer()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput(tmp: Path, n: int) -> None:
    from dpokit.config import DataConfig
    from dpokit.data.cache import load_tokenized

    name, tok = tokenizer()
    print(f"read + clean + tokenize, {n:,} pairs, tokenizer {name}, {os.cpu_count()} CPU cores")
    for chat in (False, True):
        path = tmp / f"pairs-{'chat' if chat else 'text'}.jsonl"
        write_pairs(path, n, chat)
        load, cpu, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        records, lines, _ = load_tokenized(path, "pair", tok, DataConfig(), 512, 256, tmp / "report.json", None)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        tokens = sum(len(r.prompt_ids) + sum(map(len, r.completion_ids)) for r in records)
        print(f"  {'chat messages' if chat else 'plain text':13s} {n / seconds:8,.0f} pairs/s: {seconds:.1f} s wall, "
              f"{cpu:.1f} s CPU ({cpu / n * 1e6:.0f} µs per pair), {tokens / len(records):.0f} tokens per pair, "
              f"load average {load:.1f}; {len(records):,} pairs kept")
        for line in lines[1:]:
            print("   ", line.strip())


def peak_memory(tmp: Path, n: int) -> None:
    path, out = tmp / "big.jsonl", tmp / "big-out.jsonl"
    write_pairs(path, n, chat=False)
    size = path.stat().st_size / 2**20
    cmd = [sys.executable, "-m", "dpokit.cli", "data", "convert", str(path), str(out), "--to", "pairs"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    kept = sum(1 for _ in open(out, encoding="utf-8"))
    print(f"dpokit data convert --to pairs, {n:,} records ({size:,.0f} MiB of JSONL): peak RSS {peak:,.0f} MiB, "
          f"{seconds:.0f} s ({n / seconds:,.0f} records/s), {kept:,} kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peak_memory(Path(tmp), args.records)  # first: RUSAGE_CHILDREN keeps the largest child's peak
        throughput(Path(tmp), args.pairs)


if __name__ == "__main__":
    main()
