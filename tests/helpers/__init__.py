"""Shared builders for tests: a tiny model folder, small data files, configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

from safetensors.torch import load_file

from dpokit.config import RunConfig, load_config
from dpokit.policies.lm.tiny import write_tiny_model

WORDS = "good bad film food warm cold bright dull quick slow lovely awful kind rude clean messy".split()


def write_pairs(path: Path, n: int = 16, seed: int = 0, chat: bool = True) -> Path:
    """Pairs with varied prompt and answer lengths, so batches need padding."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            prompt = f"Review item {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
            chosen = " ".join(rng.choices(WORDS[:8], k=rng.randint(2, 9)))
            rejected = " ".join(rng.choices(WORDS[8:], k=rng.randint(2, 9)))
            if chat:
                rec = {"prompt": [{"role": "user", "content": prompt}],
                       "chosen": [{"role": "assistant", "content": chosen}],
                       "rejected": [{"role": "assistant", "content": rejected}]}
            else:
                rec = {"prompt": prompt + "\n", "chosen": chosen, "rejected": rejected}
            f.write(json.dumps(rec) + "\n")
    return path


def tiny_model_dir(tmp: Path, seed: int = 0) -> Path:
    return write_tiny_model(tmp / f"tiny-model-{seed}", seed=seed)


def config(model: Path, data: Path, out: Path, **overrides) -> RunConfig:
    base = {"model.path": str(model), "data.train": str(data), "train.output": str(out),
            "train.progress": False, "train.lr": 1e-3, "train.max_steps": 3, "train.batch_size": 4,
            "train.ref_cache_dir": str(out.parent / "refcache"), "data.max_length": 64,
            "data.max_prompt_length": 32}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


def final_weights(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
