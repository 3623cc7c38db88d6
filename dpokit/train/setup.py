"""Everything the loop needs before its first step: the policy and its reference, from the
policy kind (``dpokit.policies``) the config names."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpokit.config import RunConfig
from dpokit.errors import UserError
from dpokit.losses import LossSpec
from dpokit.policies.base import Policy
from dpokit.policies import reference as ref_lib
from dpokit.precision import resolve as resolve_precision
from dpokit.train.batches import BatchStream, eval_batches, first_epoch_batches
from dpokit.train.engines import Engine, prepare_reference, stand_ins


class PendingCache:
    """A precomputed reference still to compute: under a sharding engine every forward pass is a
    collective, so the cache is computed after the policy (or ``model``) is wrapped, by
    ``finish_reference``. ``digest`` hashes the starting weights, taken while they were whole."""

    def __init__(self, model, digest: str):
        self.model, self.digest = model, digest


def build_reference(cfg: RunConfig, spec: LossSpec, kind: Policy, policy, datasets: dict[str, list],
                    autocast, log, accelerator, engine: Engine | None = None):
    """The reference strategy the config asks for, built from the *starting* weights.

    Must run before adapters are applied and before a checkpoint is loaded into the policy.
    Returns (reference or None, the policy as it trains: with adapters where asked). A copied reference's model is
    placed or wrapped later, by ``finish_reference``, once the policy is prepared.
    """
    strategy = cfg.train.ref if spec.needs_reference else "none"
    ref_model = None
    if cfg.model.ref_path is not None and strategy in ("copy", "precomputed"):
        ref_model = kind.load(cfg.model.ref_path)
    if strategy == "copy" and ref_model is None:
        ref_model = copy.deepcopy(policy)
    elif strategy == "copy" and cfg.train.ref_sync_steps:
        _same_shapes(policy, ref_model, cfg.model.ref_path)
    reference = None
    if strategy == "precomputed":
        source = ref_model if ref_model is not None else policy
        if engine is not None and engine.sharded:
            reference = PendingCache(ref_model, ref_lib.model_hash(source))
        else:
            reference = _cached(cfg, kind, source, datasets, autocast, log, accelerator)
        ref_model = None  # freed: training holds one model
    policy = kind.trainable(policy)
    if strategy == "copy":
        reference = ref_lib.CopyReference(ref_model, kind, autocast, cfg.train.ref_sync_steps,
                                          cfg.train.ref_sync_alpha)
    elif strategy == "adapter" and cfg.train.ref_sync_steps:
        reference = ref_lib.MovingAdapterReference(policy, kind, autocast, cfg.train.ref_sync_steps,
                                                   cfg.train.ref_sync_alpha)
    elif strategy == "adapter":
        reference = ref_lib.AdapterReference(lambda: policy, kind, autocast)
    elif strategy == "logged":
        reference = ref_lib.LoggedReference(kind)
    return reference, policy


def _same_shapes(policy, ref_model, ref_path: str) -> None:
    """TR-DPO mixes the policy's weights into a --ref-model: the two must be one architecture."""
    ours = {n: p.shape for n, p in policy.named_parameters()}
    if ours != {n: p.shape for n, p in ref_model.named_parameters()}:
        raise UserError("a moving reference (TR-DPO) mixes in the policy's weights, so --ref-model must have the "
                        "policy's parameters (names and shapes)", where=ref_path, field="model.ref_path")


def finish_reference(cfg: RunConfig, engine: Engine, kind: Policy, reference, policy, datasets: dict[str, list],
                     autocast, log):
    """After ``accelerator.prepare``: the copied reference placed or wrapped as the policy is, and
    a pending cache computed through the wrapped model (the prepared policy still holds the
    starting weights: no checkpoint has been loaded yet)."""
    if getattr(reference, "moves", False) and (engine.sharded or engine.deepspeed):
        raise UserError(f"a moving reference (TR-DPO) needs whole weights on each process; {engine.name} "
                        "shards or wraps them", where="config", field="train.ref_sync_steps")
    if isinstance(reference, ref_lib.CopyReference):
        reference.model = prepare_reference(engine, reference.model)
    elif isinstance(reference, ref_lib.MovingAdapterReference):
        reference.model.to(engine.accelerator.device)  # the deltas sit beside the layers they add to
    elif isinstance(reference, PendingCache):
        model = policy if reference.model is None else prepare_reference(engine, reference.model)
        reference = _cached(cfg, kind, model, datasets, autocast, log, engine.accelerator, reference.digest)
    return reference


def _cached(cfg: RunConfig, kind: Policy, model, datasets: dict[str, list], autocast, log, accelerator,
            digest: str | None = None):
    """Reference log-probs for every record of every dataset, from disk or computed now; on
    several processes each computes its own training (or evaluation) batches and the shares are
    gathered. ``digest`` is given when ``model`` is already wrapped (sharded), and then it is not
    moved."""
    t = cfg.train
    folder = Path(t.ref_cache_dir or Path(t.output) / "reflogps")  # nothing outside the run by default
    settings = reference_settings(cfg, accelerator)
    values: dict[str, list] = {}
    if digest is None:
        digest = ref_lib.model_hash(model)
        model.to(accelerator.device)
    for name, records in datasets.items():
        path = folder / f"{ref_lib.cache_key(digest, kind.fingerprint(records), settings)}.safetensors"
        if not path.is_file():
            batches, start = _precompute_batches(cfg, name, len(records), accelerator), time.perf_counter()
            # Counted before any forward pass: under a sharding engine each one is a collective, and
            # the processes with fewer batches run stand-ins (outputs dropped) to match the others.
            extra = stand_ins(batches, accelerator)
            with tqdm(total=sum(map(len, batches)), desc=f"reference log-probs ({name})", leave=False,
                      disable=not (cfg.train.progress and accelerator.is_main_process)) as bar:
                share = ref_lib.compute_reference_logps(kind, model, records, batches, autocast, bar)
            ref_lib.compute_reference_logps(kind, model, records, extra, autocast)
            shares = _gather(share, accelerator)  # a collective: every process takes part
            if accelerator.is_main_process:
                merged = {i: v for s in shares for i, v in s.items()}
                ref_lib.save_cache(path, [merged[i] for i in range(len(records))])
                log(f"[reference] {name}: computed in {time.perf_counter() - start:.2f} s and cached at {path}")
            accelerator.wait_for_everyone()
        else:
            log(f"[reference] {name}: cached log-probs from {path}")
        values[name] = ref_lib.load_cache(path)
    return ref_lib.CachedReference(values)


def reference_settings(cfg: RunConfig, accelerator) -> dict:
    """What, besides the model and the data (hashed by ``cache_key``), decides cached reference
    values bit for bit: the kernels (device, torch, precision, distributed engine) and the batches
    they are computed in (rounding depends on a batch's layout), which training then runs again."""
    t = cfg.train
    return {"policy": cfg.model.policy, "dtype": resolve_precision(t.dtype, accelerator.device.type).name, "batch_size": t.batch_size,
            "grad_accum": t.grad_accum, "seed": t.seed, "processes": accelerator.num_processes,
            "share_prompt": t.share_prompt, "pack": t.pack, "logprob_chunk": t.logprob_chunk,
            "device": accelerator.device.type, "torch": torch.__version__, "engine": str(accelerator.distributed_type)}


def _precompute_batches(cfg: RunConfig, name: str, n: int, accelerator) -> list[list[int]]:
    """The batches this process will run on ``name`` in training (first epoch) or evaluation, so
    cached values equal a live reference's at those steps."""
    t, size, rank = cfg.train, accelerator.num_processes, accelerator.process_index
    if name == "train":
        return first_epoch_batches(BatchStream(n, t.batch_size, t.grad_accum, t.seed, size, rank))
    return eval_batches(n, t.batch_size, size, rank)


def _gather(share: dict, accelerator) -> list[dict]:
    if accelerator.num_processes == 1:
        return [share]
    from accelerate.utils import gather_object

    return gather_object([share])


MACHINE = "machine.json"
"""The run folder's record of the machine it ran on (read by ``dpokit report``)."""


def record_machine(out: Path, info: dict) -> None:
    """Write ``out/machine.json``; a resumed run on another machine keeps the earlier ones under
    ``earlier``, since its figures then come from more than one machine."""
    import json

    from dpokit.store.atomic import write_text_atomic
    from dpokit.store.versions import utc_now

    path, earlier = out / MACHINE, []
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        earlier = previous.pop("earlier", [])
        if {k: v for k, v in previous.items() if k != "started"} != info:
            earlier = [previous, *earlier]
    except (OSError, ValueError):
        pass  # the first start, or a file a crash left damaged: this start's record replaces it
    record = {"started": utc_now(), **info, **({"earlier": earlier} if earlier else {})}
    write_text_atomic(path, json.dumps(record, indent=1))
