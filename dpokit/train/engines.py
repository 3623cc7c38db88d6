"""The engine accelerate runs the loop on, and the few things that differ between engines.

- ``ddp`` (also one process): every process holds whole models; checkpoints are written from
  the main process's own weights and optimizer state, as before.
- ``fsdp`` (FSDP2, ``fully_shard``): parameters, gradients and optimizer state are split across
  processes. The reference is sharded the same way as the policy; weights and optimizer state
  are gathered into full (unsharded) state dicts, on every process together, before the main
  process writes them, and loaded back from those full dicts on resume.
- ``zero2`` / ``zero3`` (DeepSpeed): the optimizer (and under ZeRO-3 the parameters) live in
  DeepSpeed's engine. The reference gets its own inference engine (sharded under ZeRO-3).

Every process must call the gathering functions here, as they are collectives.
"""

from __future__ import annotations

import copy
import os

import torch
from accelerate.utils import DistributedType

from dpokit.errors import UserError

FULL_OPTIMIZER = "optimizer_full.safetensors"
"""The optimizer state of a sharded engine, keyed by parameter name (``optimizer.safetensors``
holds a plain ``optimizer.state_dict()``, keyed by parameter number)."""


class Engine:
    def __init__(self, name: str, accelerator):
        self.name, self.accelerator = name, accelerator

    @property
    def sharded(self) -> bool:
        """Parameters are split across processes, so every forward pass is a collective."""
        return self.name in ("fsdp", "zero3")

    @property
    def gathers(self) -> bool:
        """Checkpoints come from full state dicts gathered across processes."""
        return self.name == "fsdp"

    @property
    def deepspeed(self) -> bool:
        return self.name.startswith("zero")


def cpu_processes_without_gpus() -> None:
    """Processes launched together (torchrun, accelerate launch) on a machine without GPUs run on
    the CPU with gloo. Call before the first ``Accelerator`` of the process.

    accelerate joins several processes on the CPU only when ``ACCELERATE_USE_CPU`` says so (and
    ``accelerate launch`` sets it to false unless told ``--cpu``, which starts one process);
    otherwise each process finds no device to join on and trains alone. With no GPU there is
    nothing else to join on, so the setting is made here rather than asked of the user."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_gpu():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def _has_gpu() -> bool:
    """A device accelerate can join several processes on (CUDA, XPU, ...; Apple's MPS is not one)."""
    if not torch.accelerator.is_available():
        return False
    return torch.accelerator.current_accelerator().type != "mps"


def resolve(accelerator, cfg) -> Engine:
    """The engine accelerate was configured for (FSDP is turned on for CPU processes too, see
    ``_fsdp_on_cpu``), after checking that dpokit supports the combination; a mismatch is a
    one-line ``UserError``."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise UserError(f"{launched} processes were launched, but accelerate sees {accelerator.num_processes}: "
                        "it found no way to join them on this machine's device (see docs/distributed.md)",
                        where="launcher")
    _fsdp_on_cpu(accelerator)
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        if accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise UserError("dpokit runs FSDP as FSDP2: set `fsdp_version: 2` in the accelerate config "
                            "(see examples/accelerate/fsdp.yaml)", where="accelerate config", field="fsdp_version")
        engine = Engine("fsdp", accelerator)
    elif kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage not in (2, 3):
            raise UserError(f"ZeRO stage {stage} is not supported: use 2 or 3 "
                            "(examples/accelerate/deepspeed_zero*.yaml)", where="accelerate config", field="zero_stage")
        engine = Engine(f"zero{stage}", accelerator)
        _configure_deepspeed(accelerator, cfg)
    else:
        engine = Engine("ddp", accelerator)
    _check(engine, cfg)
    return engine


def _check(engine: Engine, cfg) -> None:
    t = cfg.train
    if engine.name != "ddp" and cfg.lora.enabled:
        raise UserError(f"LoRA runs on DDP only (engine here: {engine.name}); its frozen base fits on each "
                        "device where full fine-tuning does not: drop the FSDP/DeepSpeed config", where="--lora")
    if engine.deepspeed:
        if cfg.guard.enabled:
            raise UserError("DeepSpeed applies the optimizer step inside backward, before dpokit's guard can "
                            "skip it: add --no-guard", where="--guard")
        if t.proximal_mu:
            raise UserError("DeepSpeed applies the optimizer step inside backward, before the proximal term's "
                            "gradient can be added: drop --proximal-mu or use DDP/FSDP", where="--proximal-mu")
        if t.resume or t.save_steps:
            raise UserError("resumable checkpoints are written under DDP and FSDP only, not yet under DeepSpeed: "
                            "drop --resume/--save-steps or use examples/accelerate/fsdp.yaml", where="--save-steps")


def _configure_deepspeed(accelerator, cfg) -> None:
    """Fill what accelerate would take from a dataloader (dpokit batches its own records): the
    per-device micro-batch, and one micro-batch per DeepSpeed step, since the loop itself marks
    the micro-batch that ends a step and scales each loss to the whole step."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    config["gradient_accumulation_steps"] = 1
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else 0.0
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    if "optimizer" in config or "scheduler" in config:
        raise UserError("dpokit builds its own optimizer and schedule: remove `optimizer`/`scheduler` from the "
                        "DeepSpeed config", where="accelerate config", field="deepspeed_config")


def _fsdp_on_cpu(accelerator) -> None:
    """accelerate 1.15 turns FSDP on only for GPU-like process groups: with ``ACCELERATE_USE_CPU``
    it reads the FSDP settings but quietly runs plain data parallel. FSDP2's ``fully_shard`` itself
    works on CPU with gloo, so the FSDP state is set here, as accelerate would on GPUs; this is
    how the CPU test runs the real FSDP path."""
    state = accelerator.state
    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not (wanted and state.distributed_type == DistributedType.MULTI_CPU):
        return
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch sets
    if type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy":
        # fully_shard pins the offloaded shards in host memory, which needs an accelerator
        raise UserError("FSDP CPU offload needs GPUs (the processes here already run on the CPU): use fsdp.yaml",
                        where="accelerate config", field="fsdp_offload_params")
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # As accelerate does for GPUs: the process-level state says FSDP too, or the next
    # AcceleratorState() (accelerate makes them freely) copies MULTI_CPU back.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def stand_ins(batches: list[list[int]], accelerator) -> list[list[int]]:
    """The stand-in batches (outputs to be dropped) this process runs after its ``batches`` so that
    every process runs as many forward passes as the busiest one: under a sharding engine each
    forward pass is a collective, and shares of a dataset split P ways can differ by a batch.
    Itself a collective: call it before the first of those forward passes."""
    if accelerator.num_processes == 1:
        return []
    counts = accelerator.gather(torch.tensor([len(batches)], device=accelerator.device))
    return [batches[0] if batches else [0]] * (int(counts.max()) - len(batches))


def prepare_reference(engine: Engine, model):
    """The frozen reference model, placed or wrapped as the policy is."""
    accelerator = engine.accelerator
    model.eval().requires_grad_(False)
    if engine.name == "fsdp":
        from accelerate.utils import fsdp2_prepare_model

        # accelerate prepares one model per FSDP2 run, together with its optimizer; the reference
        # has none, so it is sharded with the same plugin settings (auto wrap, offload) directly.
        return fsdp2_prepare_model(accelerator, model)
    if engine.deepspeed:
        return _deepspeed_inference(accelerator, model, engine.name == "zero3")
    return model.to(accelerator.device)


def _deepspeed_inference(accelerator, model, shard: bool):
    """An optimizer-less DeepSpeed engine for the reference: ZeRO-3 shards it like the policy;
    under ZeRO-2 it is a whole frozen copy on each device (stage 0)."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):  # nothing to train: no optimizer or schedule to build
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    zero["stage"] = 3 if shard else 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine.eval()


def unwrap(engine: Engine, model):
    """The Hugging Face model inside the engine's wrapper (under FSDP2 the model itself)."""
    return engine.accelerator.unwrap_model(model) if not engine.deepspeed else getattr(model, "module", model)


def gather_states(engine: Engine, model, optimizer) -> tuple[dict, dict] | tuple[None, None]:
    """Full (model, optimizer) state dicts on the main process, empty on the others; (None, None)
    for engines whose processes each hold whole states. A collective."""
    if not engine.gathers:
        return None, None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    weights = gather_weights(engine, model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return weights, get_optimizer_state_dict(model, _inner(optimizer), options=options)


def gather_weights(engine: Engine, model) -> dict | None:
    """The full model state dict on the main process for sharded engines, else None. A collective."""
    if engine.name == "ddp":
        return None
    weights = engine.accelerator.get_state_dict(model)
    # Tied weights (embedding = LM head) arrive as two gathered copies; keep the name the model
    # keeps, so the folder is the one a single process writes.
    return {k: v for k, v in weights.items() if k not in _tied_names(unwrap(engine, model))}


def _tied_names(model) -> set[str]:
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def load_states(engine: Engine, model, optimizer, weights: dict, optim: dict) -> None:
    """Load full state dicts (read from disk by every process) into the sharded model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import FSDPModule

    # A forward pass leaves groups with reshard_after_forward=False (accelerate's embedding/LM-head
    # group) holding whole tensors; loading copies into the shards, so put every group back first.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    # Not strict: tied names were left out on saving (``gather_weights``) and load through their twin.
    missing, unexpected = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True,
                                                                                        strict=False))
    if unexpected or set(missing) - _tied_names(model):
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    set_optimizer_state_dict(model, _inner(optimizer), optim, options=StateDictOptions(full_state_dict=True))


def _inner(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def check_precision(engine: Engine, precision) -> None:
    """fp16's loss scaler is torch's GradScaler, which dpokit runs on whole (DDP) models only."""
    if precision.name == "fp16" and engine.name != "ddp":
        raise UserError(f"fp16 training runs on DDP only (engine here: {engine.name}); use --dtype bf16 or fp32",
                        where="--dtype")
