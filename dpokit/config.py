"""Typed run configuration: one dataclass per component, loaded from YAML, overridden by flags.

Every field has its default and a docstring in its dataclass and nowhere else (the ``loss:`` and
``guard:`` sections live in ``loss_config.py`` and ``guard_config.py``). ``load_config`` checks
that each key names an existing field with a value of the right type, and
``RunConfig.validate`` holds every cross-field rule, so a bad setting fails before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dpokit.data.formats import FORMATS
from dpokit.errors import UserError, warn
from dpokit.flags import RENAMED_FIELDS, config_flags, spellings
from dpokit.guard_config import GuardConfig
from dpokit.loss_config import LossConfig


REGISTRY_ENV = "DPOKIT_REGISTRY"


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


Dtype = Literal["auto", "fp32", "bf16", "fp16"]
# the format registry's names; the format ``pairs`` (prompt/chosen/rejected) gives records of the kind ``pair``
FORMAT_NAMES = Literal[("auto", *FORMATS)]


@dataclass
class DataConfig:
    """Where the data is and how the pipeline reads and cleans it (docs/data.md)."""

    train: str = ""
    """Training records: JSON, JSONL (also .gz), CSV, Parquet, or a ``save_to_disk`` folder."""
    eval: str | None = None
    """Held-out records evaluated with the same metrics."""
    max_length: int = 512
    """Token budget for prompt + completion; completions keep their start."""
    max_prompt_length: int = 256
    """Token budget for the prompt; prompts keep their end."""
    format: FORMAT_NAMES = "auto"
    """Input format; ``auto`` tells it from the first record's fields."""
    columns: str = ""
    """Field names to read from other columns, ``name=column,...`` (e.g. ``prompt=instruction,chosen=output_a``;
    a column may be a dotted path into nested objects)."""
    pairing: Literal["best-worst", "best-each", "all"] = "best-worst"
    """How rated or ranked answers become pairs: best vs worst, best vs each other, or every pair
    whose scores differ by more than ``min_margin``."""
    min_margin: float = 0.0
    """A pair from a list needs score(better) − score(worse) > this (rankings score positions k−1…0)."""
    votes: Literal["majority", "unanimous"] = "majority"
    """How several annotators' votes on one pair decide it."""
    ties: Literal["drop", "keep"] = "drop"
    """Pairs judged a tie: dropped, or kept marked ``"tie": true`` (``dpokit data convert`` only)."""
    click_min_dwell: float = 0.0
    """Click logs: a click with a dwell time (seconds) below this counts as no click."""
    click_bias: float = 0.0
    """Click logs: η of the position-bias weight k^η of a pair whose clicked item is at position k (0: off)."""
    dedup: Literal["normalized", "exact", "off"] = "normalized"
    """Drop repeated records: exact copies, also copies that differ only in whitespace or case, or none."""
    drop_empty: bool = True
    """Drop records with an empty prompt or answer."""
    drop_identical: bool = True
    """Drop pairs and lists whose answers are equal (after whitespace/case normalisation)."""
    drop_conflicts: bool = True
    """Drop records whose prompt and answers also occur with the opposite label (both sides)."""
    drop_leaks: bool = True
    """Drop records whose answers contain template text: role tags, special tokens, EOS text."""
    min_chars: int = 0
    """Drop records with an answer shorter than this many characters (0: off)."""
    max_chars: int = 0
    """Drop records whose prompt or an answer is longer than this many characters (0: off)."""
    max_length_ratio: float = 0.0
    """Drop pairs and lists whose longest answer is more than this many times the shortest (0: off)."""
    balance: Literal["off", "over", "under"] = "off"
    """Equal counts per ``balance_by`` group, by repeating records of small groups or sampling large ones."""
    balance_by: str = "label"
    """Balancing key: ``label`` (unpaired records) or an input column, e.g. ``source``."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed record stops the run, or is skipped and counted in the report."""
    cache: bool = True
    """Cache tokenized data, keyed by the data's hash, the tokenizer and these settings."""
    cache_dir: str | None = None
    """Where tokenized data is cached (default ``OUTPUT/data_cache``); share it between runs."""

    def checks(self) -> list[tuple[bool, str, str]]:
        """(bad, field, message) for the data settings, for ``RunConfig.validate``."""
        from dpokit.data.fields import parse_columns

        parse_columns(self.columns)  # raises on a malformed mapping
        return [
            (self.min_margin < 0, "data.min_margin", "must be ≥ 0"),
            (self.click_min_dwell < 0, "data.click_min_dwell", "must be ≥ 0"),
            (self.click_bias < 0, "data.click_bias", "must be ≥ 0"),
            (self.min_chars < 0, "data.min_chars", "must be ≥ 0"),
            (self.max_chars < 0 or 0 < self.max_chars <= self.min_chars, "data.max_chars",
             "must be 0 (off) or larger than data.min_chars"),
            (self.max_length_ratio != 0 and self.max_length_ratio < 1, "data.max_length_ratio",
             "must be 0 (off) or ≥ 1"),
            (self.balance != "off" and not self.balance_by, "data.balance_by", "is required to balance"),
        ]


@dataclass
class TrainConfig:
    output: str = "runs/dpokit"
    """Run folder: metrics.jsonl, checkpoint-STEP/, final/."""
    ref: Literal["copy", "adapter", "precomputed", "none"] = "precomputed"
    """Reference strategy: frozen copy, LoRA adapters off, log-probs cached on disk, or none."""
    max_steps: int = -1
    """Optimizer steps; -1 runs ``epochs`` full passes."""
    epochs: int = 1
    """Passes over the training data when ``max_steps`` is -1."""
    batch_size: int = 4
    """Records per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 5e-7
    """Peak learning rate."""
    optimizer: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    """Optimizer."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) or L2 penalty (SGD, RMSprop)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW β1, β2."""
    momentum: float = 0.0
    """Momentum for SGD and RMSprop."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to ``lr``."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    seed: int = 0
    """Seeds shuffling, initialisation of adapters, and sampling."""
    dtype: Dtype = "auto"
    """Forward-pass precision: auto (bf16 where the device runs it natively, fp16 on a GPU without
    bf16, else fp32), fp32, bf16 or fp16 (autocast; weights and optimizer stay fp32)."""
    bf16: bool | None = None
    """Alias: true is dtype bf16, false is dtype fp32."""
    logging_steps: int = 1
    """Write metrics every N optimizer steps."""
    eval_steps: int = 0
    """Evaluate on ``data.eval`` every N steps (0: only at the end)."""
    save_steps: int = 0
    """Write ``checkpoint-STEP/`` every N steps (0: only ``final/``)."""
    save_total_limit: int = 2
    """Keep this many most recent checkpoints (0 keeps all)."""
    save_best_metric: str | None = None
    """Also keep the checkpoint with the best value of this logged metric, e.g.
    ``eval/rewards/accuracies`` or ``loss`` (measured at the checkpoint's own step)."""
    save_best_mode: Literal["max", "min"] = "max"
    """Whether the best ``save_best_metric`` is the largest or the smallest."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output``."""
    progress: bool = True
    """Show a live progress bar."""
    ref_cache_dir: str | None = None
    """Where precomputed reference log-probs live (default ``OUTPUT/reflogps``); point several runs
    at one folder to share them."""
    registry: str | None = field(default_factory=default_registry)
    """Register ``final/`` as a new version in this registry folder (``dpokit versions``; default
    $DPOKIT_REGISTRY; an empty string registers nothing)."""
    logprob_chunk: int = 1024
    """Completion positions per chunk of LM head + log-softmax, each recomputed in backward so the
    full tokens × vocabulary logits are never held; 0 computes them all at once."""
    share_prompt: bool = True
    """Encode each prompt once for all its responses (block attention mask; sdpa/eager attention)."""
    pack: bool = True
    """Pack several records into one row (block-diagonal attention mask), filling the padding."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> RunConfig:
        """Cross-field rules; raises UserError naming the offending setting."""
        from dpokit.losses import get_loss

        try:
            spec = get_loss(self.loss.name)
        except (KeyError, ValueError) as exc:
            raise UserError(exc.args[0], where="config", field="loss.name") from None
        self.loss.resolve_defaults(spec.defaults)
        t, d, lo = self.train, self.data, self.loss
        t.dtype, t.bf16 = fold_bf16(t.dtype, t.bf16, "train."), None
        checks = [
            (not self.model.path, "model.path", "is required (--model)"),
            (not d.train, "data.train", "is required (--data)"),
            (t.batch_size < 1, "train.batch_size", "must be ≥ 1"),
            (t.logprob_chunk < 0, "train.logprob_chunk", "must be ≥ 0 (0: no chunking)"),
            (t.grad_accum < 1, "train.grad_accum", "must be ≥ 1"),
            (t.max_steps == 0 or t.max_steps < -1, "train.max_steps", "must be -1 or ≥ 1"),
            (t.epochs < 1, "train.epochs", "must be ≥ 1"),
            (t.lr <= 0, "train.lr", "must be > 0"),
            (t.warmup_steps < 0, "train.warmup_steps", "must be ≥ 0"),
            (t.max_grad_norm < 0, "train.max_grad_norm", "must be ≥ 0"),
            (d.max_length < 2, "data.max_length", "must be ≥ 2"),
            (not 1 <= d.max_prompt_length < d.max_length, "data.max_prompt_length",
             "must be ≥ 1 and smaller than data.max_length"),
            *d.checks(),
            (d.ties == "keep", "data.ties", "'keep' is for `dpokit data convert`: no loss trains on ties"),
            *lo.checks(),
            (spec.token_kl and t.ref not in ("copy", "adapter"), "train.ref",
             f"loss '{spec.name}' needs the reference's full per-token distributions; use copy or adapter"),
            (self.lora.r < 1, "lora.r", "must be ≥ 1"),
            (t.save_total_limit < 0, "train.save_total_limit", "must be ≥ 0 (0 keeps all)"),
            *self._best_checks(),
            *self.guard.checks(bool(d.eval), spec.needs_reference and t.ref != "none", t.save_steps),
            (bool(t.registry) and Path(t.registry).is_file(), "train.registry",
             "is a file; give a folder"),
            (spec.needs_reference and t.ref == "none", "train.ref",
             f"loss '{spec.name}' needs a reference; use copy, adapter or precomputed"),
            (t.ref == "adapter" and not self.lora.enabled, "train.ref",
             "'adapter' needs LoRA (--lora): the reference is the policy with adapters off"),
            (t.ref == "adapter" and self.model.ref_path is not None, "train.ref",
             "'adapter' uses the policy's own base weights; drop --ref-model or use copy/precomputed"),
        ]
        for bad, key, msg in checks:
            if bad:
                raise UserError(msg, where="config", field=key)
        return self

    def _best_checks(self) -> list[tuple[bool, str, str]]:
        """``save_best_metric`` must be measured at every checkpoint's own step."""
        t, metric = self.train, self.train.save_best_metric
        if not metric:
            return []
        if metric.startswith("eval/"):
            every, name = t.eval_steps, "train.eval_steps"
        else:
            every, name = t.logging_steps, "train.logging_steps"
        return [
            (t.save_steps < 1, "train.save_best_metric", "needs checkpoints: set train.save_steps (--save-steps)"),
            (metric.startswith("eval/") and not self.data.eval, "train.save_best_metric",
             f"'{metric}' needs held-out data (--eval-data)"),
            (t.save_steps >= 1 and (every < 1 or t.save_steps % every != 0), "train.save_best_metric",
             f"'{metric}' must be measured at every checkpoint: set {name} to a divisor of "
             f"train.save_steps ({t.save_steps}); it is {every}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DataCommandConfig(RunConfig):
    """A run config of which ``dpokit data`` uses only the data section: only it is checked."""

    def validate(self) -> DataCommandConfig:
        for bad, key, msg in self.data.checks():
            if bad:
                raise UserError(msg, where="config", field=key)
        return self


@dataclass
class EvalConfig:
    model: str = ""
    """The policy to evaluate (folder, .gguf or builtin:...)."""
    ref_model: str = ""
    """The model to compare against (usually the model training started from)."""
    prompts: str = ""
    """Held-out prompts: records with a ``prompt`` field (pairs files work too)."""
    judge: str = ""
    """``package.module:function`` scoring (prompt, response) or comparing (prompt, a, b)."""
    pairs: str | None = None
    """Held-out preference pairs for reward accuracy and margins under the implicit reward."""
    beta: float = 0.1
    """β of the implicit reward β·log π/π_ref used for ``pairs``."""
    max_new_tokens: int = 64
    """Answer budget per sample."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 with top_p 1.0 samples π itself, as the KL estimate assumes."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    num_prompts: int = 0
    """Use the first N prompts (0: all)."""
    batch_size: int = 16
    """Prompts per generation batch."""
    max_length: int = 512
    """Token budget for prompt + completion when scoring pairs."""
    max_prompt_length: int = 256
    """Prompts keep their last this-many tokens."""
    seed: int = 0
    """Sampling seed (the same for policy and reference)."""
    dtype: Dtype = "auto"
    """Precision of generation and scoring: auto (bf16 where native, fp16 on a GPU without bf16,
    else fp32), fp32, bf16 or fp16."""
    bf16: bool | None = None
    """Alias: true is dtype bf16, false is dtype fp32."""
    output: str | None = None
    """Write ``eval_report.json`` and ``samples.jsonl`` here."""
    trust_remote_code: bool = False
    """Run model code shipped inside the model folders."""
    allow_pickle: bool = False
    """Load weights stored with pickle, which can run code when read (off unless asked)."""
    registry: str | None = field(default_factory=default_registry)
    """Attach the report to a version in this registry folder (``dpokit versions``; default
    $DPOKIT_REGISTRY; an empty string attaches nothing)."""
    version: str | None = None
    """The version to attach the report to (default: the version whose model is ``model``)."""

    def validate(self) -> EvalConfig:
        self.dtype, self.bf16 = fold_bf16(self.dtype, self.bf16, ""), None
        checks = [
            (not self.model, "model", "is required (--model)"),
            (not self.ref_model, "ref_model", "is required (--ref-model)"),
            (not self.prompts, "prompts", "is required (--prompts)"),
            (not self.judge, "judge", "is required (--judge package.module:function)"),
            (self.max_new_tokens < 1, "max_new_tokens", "must be ≥ 1"),
            (self.temperature < 0, "temperature", "must be ≥ 0"),
            (not 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.batch_size < 1, "batch_size", "must be ≥ 1"),
            (self.beta <= 0, "beta", "must be > 0"),
            (not 1 <= self.max_prompt_length < self.max_length, "max_prompt_length",
             "must be ≥ 1 and smaller than max_length"),
            (self.version is not None and not self.registry, "version", "needs a registry (--registry)"),
        ]
        for bad, key, msg in checks:
            if bad:
                raise UserError(msg, where="config", field=key)
        return self


def fold_bf16(dtype: str, bf16: bool | None, prefix: str) -> str:
    """The dtype once the older ``bf16`` switch (true: bf16, false: fp32) is folded into it."""
    if bf16 is None:
        return dtype
    alias = "bf16" if bf16 else "fp32"
    if dtype not in ("auto", alias):
        raise UserError(f"says {alias} but {prefix}dtype is {dtype}; give one of them", where="config",
                        field=f"{prefix}bf16")
    return alias


DATA_COMMAND_NOT_FLAGS = {
    **{f"{section}.": "dpokit data reads only the data section" for section in ("model", "lora", "loss", "train",
                                                                              "guard")},
    "data.train": "the input file is the command's argument", "data.eval": "one input file at a time",
    "data.max_length": "token budgets apply when training tokenizes", "data.max_prompt_length": "as data.max_length",
    "data.cache": "dpokit data caches nothing", "data.cache_dir": "as data.cache",
}
"""Fields of ``DataCommandConfig`` that ``dpokit data`` offers no flag for, and why."""

TRAIN_FLAG_SET = config_flags(RunConfig)
"""The flags of ``dpokit sft`` and ``dpokit dpo``: one per field of ``RunConfig``."""
FLAG_FIELDS: dict[str, str] = spellings(TRAIN_FLAG_SET)
"""Each spelling of a training flag (underscores) -> the field it sets."""


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are due."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            return _coerce(value, arg, where, key)
    if origin is Literal:
        if value not in args:
            raise UserError(f"must be one of {', '.join(map(str, args))}; got {value!r}", where, key)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"must be a list of {len(args)} numbers; got {value!r}", where, key)
        return tuple(_coerce(v, a, where, key) for v, a in zip(value, args))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"must be a finite number; got {value!r}", where, key)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise UserError(f"must be {tp.__name__}; got {type(value).__name__} {value!r}", where, key)
    return value


def _apply(obj: Any, values: dict[str, Any], where: str, prefix: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"must be a mapping; got {type(values).__name__}", where, prefix.rstrip("."))
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{prefix}{key}"
        key = _renamed(key, name, values, where)
        if key not in hints:
            known = ", ".join(f"{prefix}{k}" for k in hints)
            raise UserError(f"unknown key (known: {known})", where, name)
        if dataclasses.is_dataclass(hints[key]):
            _apply(getattr(obj, key), value, where, f"{name}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where, name))


def _renamed(key: str, name: str, values: dict, where: str) -> str:
    """The field an old key now names (with a warning; ``flags.RENAMED_FIELDS``), or ``key`` itself."""
    new = RENAMED_FIELDS.get(name)
    if new is None:
        return key
    key = new.rpartition(".")[2]
    if key in values:
        raise UserError(f"is the old name of {new}; give only one of them", where, name)
    warn(f"{name} is deprecated; use {new}")
    return key


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-5`` as a number (YAML 1.2; PyYAML's 1.1 rules want ``1.0e-5``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                root: type = RunConfig) -> Any:
    """Build a config (RunConfig or EvalConfig) from a YAML file and dotted overrides, then validate it."""
    cfg = root()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("config file not found", where=str(path))
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}  # noqa: S506 - safe
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"not valid YAML: {str(exc).splitlines()[0]}", where=str(path)) from None
        except RecursionError:
            raise UserError("not valid YAML: nested too deeply", where=str(path)) from None
        _apply(cfg, data, str(path), "")
    for dotted, value in (overrides or {}).items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        _apply(cfg, nested, "command line", "")
    return cfg.validate()


def save_config(cfg: RunConfig, path: Path) -> None:
    data = cfg.to_dict()
    data["train"]["adam_betas"] = list(data["train"]["adam_betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
