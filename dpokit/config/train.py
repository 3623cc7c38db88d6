"""How the training loop runs: steps, optimizer, precision, saving, the reference strategy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dpokit.config.model import Dtype, default_registry


@dataclass
class TrainConfig:
    output: str = "runs/dpokit"
    """Run folder: metrics.jsonl, checkpoint-STEP/, final/."""
    ref: Literal["copy", "adapter", "precomputed", "logged", "none"] = "precomputed"
    """Reference strategy: frozen copy, LoRA adapters off, log-probs cached on disk, the logging
    policy's propensities the records carry (item_ranker records made by ``dpokit rank records``), or none."""
    ref_sync_steps: int = 0
    """TR-DPO: every this many optimizer steps the copied reference moves towards the policy (0: it stays)."""
    ref_sync_alpha: float = 1.0
    """TR-DPO: at each of those steps reference ← α·policy + (1 − α)·reference; 1 copies the policy."""
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
    proximal_mu: float = 0.0
    """FedProx's proximal term: adds μ/2·‖θ − θ₀‖² over the trainable weights to the objective, θ₀
    the weights the run started from (a federated round's global model); 0: none. The logged loss
    is the preference loss alone."""
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
    report_to: str = "none"
    """Live experiment trackers, comma-separated: tensorboard, wandb, mlflow, trackio, or none. They
    get every metric of metrics.jsonl at its step and the config; all write locally (docs/trackers.md)."""
    run_name: str | None = None
    """The run's name in the trackers (default: the name of the ``output`` folder)."""
    trackers_dir: str | None = None
    """Where TensorBoard, W&B (offline) and MLflow write (default ``OUTPUT/trackers``; an online run's
    rounds share the run's)."""
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
