"""The model to train: where it is, how it loads, LoRA, and the registry folders default to."""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

from dpokit.errors import UserError
from dpokit.store.versions import REGISTRY_ENV


def default_registry() -> str | None:
    """The registry folder of every command that takes one when none is given: $DPOKIT_REGISTRY."""
    return os.environ.get(REGISTRY_ENV) or None


@dataclass
class ModelConfig:
    path: str = ""
    """Local HF model folder, a ``.gguf`` file, or ``builtin:smollm2-135m-instruct``."""
    ref_path: str | None = None
    """A separate reference model; by default the reference is the policy's starting weights."""
    trust_remote_code: bool = False
    """Run model code shipped inside the model folder (off unless asked)."""
    allow_pickle: bool = False
    """Load weights stored with pickle (``pytorch_model.bin``, ``*.pt``...), which can run code when
    read; off unless asked: weights come from safetensors or GGUF."""
    policy: str = "causal_lm"
    """The kind of policy: ``causal_lm`` (a Hugging Face causal LM, GGUF file or adapter) or
    ``linear_scorer`` (a linear model scoring candidate items for a context) or ``item_ranker``
    (a torch ranker over context and item feature columns, docs/ranking.md) or ``diffusion`` (a
    caption-conditioned diffusers UNet, docs/diffusion.md); docs/architecture.md."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input; 0 keeps the reference and policy passes comparable."""
    target_modules: str = "all-linear"
    """Comma-separated module names, or ``all-linear``."""
    merge: bool = False
    """Save ``final/`` with the adapter merged into the base weights."""
    init: str | None = None
    """Start the adapter from these weights instead of a fresh one: an adapter folder (with
    ``adapter_model.safetensors``) or a ``.safetensors`` file of its state dict, for the same base,
    rank and target modules. The base model (``model.path``) is unchanged, so the reference (adapters
    off, a copy or the cache) is still the base, whatever the adapter starts from (federated rounds)."""

    def init_problem(self) -> str | None:
        """Why ``init`` cannot be read, or None."""
        if self.init is None:
            return None
        if not self.enabled:
            return "needs LoRA (--lora): it gives the adapter's starting weights"
        path = Path(self.init)
        if path.is_dir() and not (path / "adapter_model.safetensors").is_file():
            return f"{path} is a folder without adapter_model.safetensors"
        if not path.is_dir() and (not path.is_file() or path.suffix != ".safetensors"):
            return f"{path} is neither an adapter folder nor a .safetensors file"
        return None


Dtype = Literal["auto", "fp32", "bf16", "fp16"]


def fold_bf16(dtype: str, bf16: bool | None, prefix: str) -> str:
    """The dtype once the older ``bf16`` switch (true: bf16, false: fp32) is folded into it."""
    if bf16 is None:
        return dtype
    alias = "bf16" if bf16 else "fp32"
    if dtype not in ("auto", alias):
        raise UserError(f"says {alias} but {prefix}dtype is {dtype}; give one of them", where="config",
                        field=f"{prefix}bf16")
    return alias
