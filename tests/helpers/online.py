"""A tiny online run for the tests of RSO sampling and list pairing: the tiny random model, a few
prompts, the judge "more letters e is better" (tests/helpers/judges.py), one short round."""

from __future__ import annotations

from pathlib import Path

from dpokit.config import load_config
from dpokit.online import OnlineConfig, online
from helpers.evidence import numbered_prompts
from helpers.evidence import write_prompts as write_texts
from helpers import tiny_model_dir


def write_prompts(path: Path, n: int, start: int = 0) -> Path:
    return write_texts(path, numbered_prompts(n, start))


def tiny_settings(tmp: Path, out: Path, **extra) -> dict:
    model = tmp / "tiny-model-0"
    if not model.is_dir():
        tiny_model_dir(tmp)
    prompts, held = tmp / "prompts.jsonl", tmp / "held.jsonl"
    if not prompts.is_file():
        write_prompts(prompts, 6)
        write_prompts(held, 2, 100)
    short = {"online__rounds": 1, "online__max_new_tokens": 8, "train__batch_size": 2}
    return online_settings(model, out, prompts, held, **{**short, **extra})


def online_settings(model: Path, out: Path, prompts: Path, held: Path, **extra) -> dict:
    """Settings of a short online run on the tiny model; ``extra`` overrides (``a__b`` for ``a.b``)."""
    base = {"model.path": str(model), "train.output": str(out), "online.prompts": str(prompts),
            "online.eval_prompts": str(held), "online.judge": "helpers.judges:count_e", "online.rounds": 2,
            "online.samples_per_prompt": 4, "online.max_new_tokens": 10, "online.generation_batch_size": 32,
            "train.lr": 1e-3, "train.batch_size": 4, "train.progress": False, "train.ref": "copy",
            "data.max_length": 48, "data.max_prompt_length": 24}
    return {**base, **{k.replace("__", "."): v for k, v in extra.items()}}


def tiny_online(tmp: Path, out: Path, log=None, **extra):
    return online(load_config(None, tiny_settings(tmp, out, **extra), root=OnlineConfig),
                  log=log or (lambda *_: None))
