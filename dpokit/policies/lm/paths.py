"""What a model argument names: one resolver that every loader goes through.

Every folder dpokit writes is also a model argument dpokit reads:

- a Hugging Face model folder (``config.json``): a full model, a ``--merge-lora`` final model, a
  full-model checkpoint (its tokenizer comes from the run's starting model, named in the
  checkpoint's ``config.yaml``, since checkpoints do not save one);
- a LoRA adapter folder (``adapter_config.json``, no ``config.json``): a LoRA run's ``final/``
  or checkpoint. Its base is ``base_model_name_or_path`` of the adapter config, else the model
  the run started from (``config.yaml`` beside or inside it); the base may itself be an adapter
  (a continued LoRA run), resolved the same way;
- a ``.gguf`` file, ``builtin:smollm2-135m-instruct``;
- ``registry:DIR@vN``: version N of the registry in DIR; ``registry:DIR`` or ``registry:DIR@current``
  its current version; ``registry:@vN`` and ``registry:`` take DIR from ``$DPOKIT_REGISTRY``.

``resolve_model_path`` turns any of these into a ``ModelSource``; ``dpokit.policies.lm.load`` loads one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from dpokit.errors import UserError
from dpokit.store.versions import REGISTRY_PREFIX, registry_model

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_MAX_CHAIN = 32  # adapters on adapters (one per continued run or online round); a loop ends here


@dataclass(frozen=True)
class ModelSource:
    """A model argument, resolved. ``folder`` is what ``from_pretrained`` reads (a folder, the
    folder of ``gguf``, an adapter folder, or a hub id); ``base`` is set for adapters only."""

    spec: str
    folder: str
    gguf: str | None = None
    base: ModelSource | None = None
    tokenizer: ModelSource | None = None
    """Where the tokenizer is when it is not in ``folder`` (a checkpoint, an adapter without one)."""

    @property
    def kind(self) -> str:
        return "adapter" if self.base is not None else "gguf" if self.gguf else "folder"

    @property
    def path(self) -> str:
        """A path that resolves to this same model again: absolute for local files, so it can be
        written into an adapter's config and read from any working directory."""
        local = Path(self.folder) / self.gguf if self.gguf else Path(self.folder)
        return str(local.resolve()) if local.exists() else self.folder

    def tokenizer_source(self) -> ModelSource:
        return self.tokenizer or (self.base.tokenizer_source() if self.base and not _has_tokenizer(self) else self)


def hub_allowed() -> bool:
    """Hub downloads are off unless the user sets ``DPOKIT_ALLOW_HUB=1``."""
    return os.environ.get("DPOKIT_ALLOW_HUB") == "1"


def resolve_model_path(spec: str, _depth: int = 0) -> ModelSource:
    """The model ``spec`` names; a UserError naming ``spec`` (and what is missing) otherwise."""
    if _depth > _MAX_CHAIN:
        raise UserError(f"adapters chained more than {_MAX_CHAIN} deep (does an adapter name itself as base?)",
                        where=spec)
    if spec == BUILTIN_SMOLLM2:
        from dpokit.policies.lm.load import embedded_smollm2

        return ModelSource(spec, str(embedded_smollm2()))
    if spec.startswith(REGISTRY_PREFIX):
        return resolve_model_path(registry_model(spec), _depth + 1)
    p = Path(spec)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError("GGUF file not found", where=spec)
        return ModelSource(spec, str(p.parent), p.name)
    try:
        exists = p.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise UserError(f"not a usable path: {getattr(exc, 'strerror', None) or exc}", where=spec[:200]) from None
    if not exists and hub_allowed() and _HUB_ID.fullmatch(spec):
        return ModelSource(spec, spec)
    if not p.is_dir():
        hint = "; hub downloads are off (set DPOKIT_ALLOW_HUB=1 to fetch a hub id)" if _HUB_ID.fullmatch(spec) else ""
        raise UserError(f"model folder not found (give a local folder, a .gguf file, {BUILTIN_SMOLLM2} or "
                        f"registry:DIR@vN){hint}", where=spec)
    if (p / "config.json").is_file():
        return ModelSource(spec, str(p), tokenizer=_run_tokenizer(p, _depth))
    if (p / "adapter_config.json").is_file():
        return ModelSource(spec, str(p), base=_adapter_base(p, _depth))
    raise UserError("not a Hugging Face model folder: config.json is missing (nor is it a LoRA adapter folder "
                    "with adapter_config.json)", where=spec)


def concrete_path(spec: str) -> str:
    """``spec`` as a local path where it resolves (registry forms to their version's folder), else
    as given: for identities and records, which must not change meaning when the registry does."""
    try:
        return resolve_model_path(spec).path
    except UserError:
        return spec


# -- adapters and checkpoints: where their base and tokenizer are -----------------------------------

def _has_tokenizer(source: ModelSource) -> bool:
    return source.gguf is not None or any((Path(source.folder) / f).is_file() for f in _TOKENIZER_FILES)


def run_start_model(folder: Path) -> str | None:
    """The model the run that wrote ``folder`` started from: ``model.path`` of the config saved in
    a checkpoint, or beside a run's ``final/``."""
    candidates = [folder / "config.yaml"] + ([folder.parent / "config.yaml"] if folder.name == "final" else [])
    for path in candidates:
        try:
            start = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model", {}).get("path")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(start, str) and start:
            return start
    return None


def _run_tokenizer(folder: Path, depth: int) -> ModelSource | None:
    """A full-model checkpoint holds no tokenizer: take the starting model's (training never changes it)."""
    if any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    start = run_start_model(folder)
    if start is None:
        return None  # loading the tokenizer then names the folder
    try:
        return resolve_model_path(start, depth + 1).tokenizer_source()
    except UserError:
        return None


def _adapter_base(folder: Path, depth: int) -> ModelSource:
    """The adapter's base: its config's ``base_model_name_or_path``, else the run's starting model."""
    try:
        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        raise UserError("adapter_config.json is not readable JSON", where=str(folder)) from None
    tried: list[str] = []
    for candidate in dict.fromkeys(c for c in (named, run_start_model(folder)) if isinstance(c, str) and c):
        if Path(candidate).resolve() == folder.resolve():
            continue
        try:
            return resolve_model_path(candidate, depth + 1)
        except UserError as exc:
            if "adapters chained" in exc.detail:
                raise
            tried.append(f"'{candidate}' ({exc.detail.split(' (')[0]})")
    found = "; ".join(tried) if tried else "neither adapter_config.json nor a run config.yaml names one"
    raise UserError(f"LoRA adapter folder whose base model is not found: {found}. Put the base model back, or "
                    "set base_model_name_or_path in adapter_config.json", where=str(folder))
