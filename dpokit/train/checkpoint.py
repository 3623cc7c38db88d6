"""Checkpoints: everything needed to continue a run exactly, written atomically, verified on resume.

``checkpoint-STEP/`` holds the model as ``save_pretrained`` writes it (safetensors; for LoRA,
the adapter), ``optimizer.safetensors``, ``scheduler.safetensors`` and ``rng.safetensors``
(tensors in safetensors, the rest of each state as JSON in the file's metadata: nothing is
unpickled on resume), ``trainer_state.json`` (step and data position), ``metrics.json`` (the
metrics logged at that step), ``config.yaml`` and ``manifest.json`` (size and sha256 of every
file). See ``dpokit.store.atomic`` for how a folder is written and verified.

Resuming takes the newest checkpoint that passes verification; one that fails is named with
the reason and skipped. Retention keeps the last ``save_total_limit`` checkpoints and, with
``save_best_metric``, the best one by that metric.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dpokit.config import RunConfig, TrainConfig, save_config
from dpokit.errors import UserError
from dpokit.policies.lm.load import is_peft
from dpokit.store.atomic import atomic_folder, verify
from dpokit.train.engines import FULL_OPTIMIZER, Engine, load_states

REFERENCE = "reference.safetensors"  # a moving reference's weights (TR-DPO)


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
    lr_scale: float = 1.0
    """Multiplier of the configured learning rate; each guard rollback lowers it."""
    guard: dict = field(default_factory=dict)
    """The guards' counters (skipped steps, rollbacks, best held-out accuracy), plain numbers."""
    loss_scale: dict = field(default_factory=dict)
    """fp16's loss scaler state (scale and growth counter); empty in fp32 and bf16."""


def write_weights(model, folder: Path, weights: dict | None = None) -> None:
    """``weights``: the full state dict a sharding engine gathered (the model's own are shards)."""
    model.save_pretrained(folder, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(folder.glob("model*.safetensors")):  # model.safetensors or its shards
        state.update(load_file(str(f)))
    return state


def load_model_weights(model, folder: Path) -> None:
    """Load trained weights saved by ``save_model`` into a model of the same shape."""
    own = getattr(model, "load_saved_weights", None)
    if own is not None:  # a module that writes its own folder format (the diffusion denoiser) reads it back
        own(folder)
        return
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    state = read_weights(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")


# -- optimizer, scheduler and RNG states as safetensors + JSON (no pickle) -------------------------

def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj``; tensors go to ``tensors`` by number. Containers are tagged, so int dict
    keys and tuples come back as they were."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [_encode(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag == "tensor":
        return tensors[value]
    if tag == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    items = [_decode(v, tensors) for v in value]
    return tuple(items) if tag == "tuple" else items


def save_state(path: Path, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(obj, tensors))
    save_file(tensors, str(path), metadata={"structure": structure})


def load_state(path: Path) -> Any:
    with safe_open(str(path), "pt") as f:
        structure = json.loads(f.metadata()["structure"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _decode(structure, tensors)


# -- saving, retention, choosing and loading a checkpoint ------------------------------------------

def save_checkpoint(output: Path, state: TrainState, model, optimizer, scheduler, cfg: RunConfig,
                    metrics: dict | None = None, eval_metrics: dict | None = None,
                    gathered: tuple[dict, dict] | tuple[None, None] = (None, None), reference=None) -> Path:
    """Write ``checkpoint-STEP/`` atomically, then apply retention.

    ``metrics`` and ``eval_metrics`` are those logged at this step (eval ones get the ``eval/``
    prefix, as in metrics.jsonl); retention by ``save_best_metric`` reads them back. ``gathered``:
    the full (weights, optimizer state) of a sharding engine (``engines.gather_states``); the
    optimizer state is then keyed by parameter name and stored as ``optimizer_full.safetensors``.
    ``reference``: a reference model that moves during training (TR-DPO), saved as ``reference.safetensors``.
    """
    weights, optim = gathered
    final = output / f"checkpoint-{state.step}"
    logged = {**(metrics or {}), **{f"eval/{k}": v for k, v in (eval_metrics or {}).items()}}
    with atomic_folder(final, "checkpoint") as tmp:
        write_weights(model, tmp, weights)
        if optim is None:
            save_state(tmp / "optimizer.safetensors", optimizer.state_dict())
        else:
            save_state(tmp / FULL_OPTIMIZER, optim)
        save_state(tmp / "scheduler.safetensors", scheduler.state_dict())
        if reference is not None:
            # parameters, not state_dict(): tied embeddings are one parameter, and buffers never move
            save_state(tmp / REFERENCE, {n: p.detach() for n, p in reference.named_parameters()})
        save_state(tmp / "rng.safetensors", {"torch": torch.get_rng_state(), "python": random.getstate()})
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
        (tmp / "metrics.json").write_text(json.dumps(logged))
        save_config(cfg, tmp / "config.yaml")
    prune_checkpoints(output, cfg.train)
    best = cfg.train.save_best_metric
    if best and best not in logged:
        raise UserError(f"'{best}' is not among the metrics logged at step {state.step} "
                        f"({', '.join(sorted(logged))}); {final.name} was saved: fix the name and continue "
                        "with --resume", where="config", field="train.save_best_metric")
    return final


def checkpoints(output: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-STEP`` folder, oldest first, verified or not."""
    found = [(int(m.group(1)), p) for p in Path(output).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()]
    return sorted(found)


def checkpoint_metrics(folder: Path) -> dict:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def best_checkpoint(output: Path, metric: str, mode: str = "max") -> Path | None:
    """The checkpoint with the best finite value of ``metric``; ties go to the earlier one."""
    best, best_value = None, None
    for _, path in checkpoints(output):
        value = checkpoint_metrics(path).get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if best_value is None or (value > best_value if mode == "max" else value < best_value):
            best, best_value = path, value
    return best


def prune_checkpoints(output: Path, t: TrainConfig) -> None:
    """Keep the last ``save_total_limit`` checkpoints (0: all), plus the best by ``save_best_metric``."""
    found = checkpoints(output)
    if t.save_total_limit <= 0:
        return
    keep = {path for _, path in found[-t.save_total_limit:]}
    if t.save_best_metric:
        keep.add(best_checkpoint(output, t.save_best_metric, t.save_best_mode))
    for _, path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


def remove_partial_writes(output: Path) -> None:
    """Remove the temporary folders of checkpoint and model writes a killed run left behind."""
    for path in Path(output).glob(".*.tmp"):
        if path.is_dir() and re.fullmatch(r"\.(checkpoint-\d+|final)\.tmp", path.name):
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(output: Path, log=print) -> Path | None:
    """The newest checkpoint that passes verification; each one that fails is logged and skipped."""
    for _, path in reversed(checkpoints(output)):
        reason = verify(path)
        if reason is None:
            return path
        log(f"[checkpoint] skipping {path}: {reason}")
    return None


def load_checkpoint(folder: Path, model, optimizer, scheduler, engine: Engine | None = None,
                    reference=None) -> TrainState:
    """Every process loads the same folder; under a sharding engine each keeps its shards.
    ``reference``: the moving reference model (TR-DPO), whose weights the checkpoint must hold."""
    full = (folder / FULL_OPTIMIZER).is_file()
    gathers = engine is not None and engine.gathers
    if full != gathers:
        raise UserError(f"it was saved under {'FSDP' if full else 'DDP or one process'}, and this run uses "
                        f"{engine.name if engine else 'one process'}: resume it under the engine that wrote it",
                        where=str(folder))
    if full:
        load_states(engine, model, optimizer, read_weights(folder), load_state(folder / FULL_OPTIMIZER))
    else:
        load_model_weights(model, folder)
        optimizer.load_state_dict(load_state(folder / "optimizer.safetensors"))
    scheduler.load_state_dict(load_state(folder / "scheduler.safetensors"))
    if reference is not None:
        if not (folder / REFERENCE).is_file():
            raise UserError("it holds no reference weights, and this run's reference moves (train.ref_sync_steps): "
                            "resume with the settings that wrote it", where=str(folder))
        saved, params = load_state(folder / REFERENCE), dict(reference.named_parameters())
        if saved.keys() != params.keys():
            raise UserError("its reference weights do not fit this run's reference model", where=str(folder))
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
    rng = load_state(folder / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return TrainState(**json.loads((folder / "trainer_state.json").read_text()))
