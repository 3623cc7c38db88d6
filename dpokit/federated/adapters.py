"""The adapter as Flower moves it: a list of numpy arrays in the order of its weight names, and the
files on either side (a ``.safetensors`` file a local run starts from, a peft adapter folder per round)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from dpokit.errors import UserError
from dpokit.store.atomic import atomic_folder

WEIGHTS = "adapter_model.safetensors"


def read_arrays(file: Path, names: list[str]) -> list[np.ndarray]:
    """The weights of ``file`` in the order of ``names``, which must be exactly its keys."""
    from safetensors.numpy import load_file

    weights = load_file(str(file))
    if set(weights) != set(names):
        odd = sorted(set(weights) ^ set(names))
        raise UserError(f"holds other adapter weights than the global adapter (e.g. '{odd[0]}')", where=str(file))
    return [weights[n] for n in names]


def write_arrays(file: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    if len(names) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(names)} adapter weights")
    save_file({n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(names, arrays)}, str(file))


def initial_adapter(cfg, folder: Path) -> list[str]:
    """Round 0's global adapter as a peft folder: ``lora.init`` where given, else a fresh adapter
    (seeded by ``train.seed``) on the base model; returns its weight names, sorted."""
    from dpokit.policies import build_policy_kind
    from dpokit.losses import get_loss

    kind = build_policy_kind(cfg, get_loss(cfg.loss.name))
    model = kind.trainable(kind.load(cfg.model.path))
    with atomic_folder(folder, "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    from safetensors.numpy import load_file

    return sorted(load_file(str(folder / WEIGHTS)))


def write_round(folder: Path, template: Path, names: list[str], arrays: list[np.ndarray], info: dict) -> None:
    """A round's global adapter as a peft folder (the config of round 0's, these weights), loadable as
    ``--model`` by every dpokit command, written atomically with its manifest."""
    with atomic_folder(folder, "model") as tmp:
        shutil.copy(template / "adapter_config.json", tmp / "adapter_config.json")
        write_arrays(tmp / WEIGHTS, names, arrays)
        (tmp / "round.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
