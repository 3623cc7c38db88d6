"""A ranker registry for the tests of daily updates and checks: one simulated world, v1 trained on
day 0's clicks and current, and day 1's log with its flipped twin and a held-out log."""

from __future__ import annotations

from pathlib import Path

from dpokit.config import load_config
from dpokit.config.rank import SimulateConfig
from dpokit.policies.ranker import write_ranker
from dpokit.rank.logs import read_log, training_records, write_jsonl
from dpokit.rank.simulate import World
from dpokit.store.versions import Registry, promote

TRAIN = ["--loss", "sigmoid", "--beta", "1", "--lr", "0.02", "--optimizer", "adamw", "--scheduler", "constant",
         "--batch-size", "32", "--max-steps", "30", "--no-progress"]
"""The training flags of each day's update."""


def ranker_registry(tmp: Path) -> tuple[World, Path, dict[str, Path]]:
    """(world, registry folder, {"day", "flipped", "held": log files})."""
    from dpokit.train import train

    world = World(SimulateConfig(users=60, items=16, seed=2).validate())
    pairs, _ = training_records(read_log(write_jsonl(tmp / "day0.jsonl", world.sample_log(2000, seed=1))),
                                clip=20.0)
    start = write_ranker(tmp / "r0", world.item_table(), buckets=512, dim=8, seed=0, **world.ranker_columns())
    reg = tmp / "registry"
    train(load_config(None, {"model.policy": "item_ranker", "model.path": str(start),
                             "data.train": str(write_jsonl(tmp / "pairs0.jsonl", pairs)), "loss.name": "sigmoid",
                             "loss.beta": 1.0, "train.lr": 0.05, "train.scheduler": "constant", "train.batch_size": 32,
                             "train.max_steps": 40, "train.ref": "copy", "train.output": str(tmp / "run0"),
                             "train.progress": False, "train.registry": str(reg)}), log=lambda *_: None)
    promote(Registry(reg), "v1")
    day1 = world.sample_log(2000, seed=2)
    files = {"day": write_jsonl(tmp / "day1.jsonl", day1),
             "flipped": write_jsonl(tmp / "flipped.jsonl", [{**r, "click": 1 - r["click"]} for r in day1]),
             "held": write_jsonl(tmp / "held.jsonl", world.sample_log(2000, seed=3))}
    return world, reg, files
