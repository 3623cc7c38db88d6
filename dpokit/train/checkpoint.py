"""Checkpoints: everything needed to continue a run exactly, written atomically.

``checkpoint-STEP/`` holds the model as ``save_pretrained`` writes it (safetensors; for LoRA,
the adapter), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (tensors and plain values only,
read back with ``weights_only=True``), ``trainer_state.json`` (step and data position) and
``config.yaml``. The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from dpokit.config import RunConfig, save_config


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current pass over the data."""
    position: int = 0
    """Records of the current epoch's order already consumed."""
    loss_state: dict = field(default_factory=dict)
    """Running statistics a loss keeps across steps (β-DPO), plain floats."""


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_model(model, folder: Path, merge_lora: bool = False) -> None:
    if is_peft(model) and merge_lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)


def load_model_weights(model, folder: Path) -> None:
    """Load trained weights saved by ``save_model`` into a model of the same shape."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")


def save_checkpoint(output: Path, state: TrainState, model, optimizer, scheduler, cfg: RunConfig) -> Path:
    final = output / f"checkpoint-{state.step}"
    tmp = output / f".checkpoint-{state.step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
    save_config(cfg, tmp / "config.yaml")
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _prune(output, cfg.train.save_total_limit)
    return final


def _steps(output: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in output.glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").is_file()]
    return sorted(found)


def _prune(output: Path, keep: int) -> None:
    if keep > 0:
        for _, path in _steps(output)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(output: Path) -> Path | None:
    steps = _steps(output)
    return steps[-1][1] if steps else None


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> TrainState:
    load_model_weights(model, folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    return TrainState(**json.loads((folder / "trainer_state.json").read_text()))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
