"""``dpokit eval``: win rate, sampled KL and reward accuracy of a policy against a reference."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config.model import Dtype, default_registry, fold_bf16
from dpokit.errors import UserError


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
    """Held-out preference pairs for reward accuracy and margins under the implicit reward; several
    files as ``a.jsonl,b.jsonl``, each also reported on its own."""
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
