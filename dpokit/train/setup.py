"""Everything the loop needs before its first step: data, policy, reference."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpokit.config import RunConfig
from dpokit.data import TokenizedRecord
from dpokit.data.cache import load_tokenized
from dpokit.errors import UserError
from dpokit.losses import LossSpec
from dpokit.policies import reference as ref_lib
from dpokit.policies.lm.load import apply_lora, disable_dropout, load_model
from dpokit.policies.lm.logprobs import Options
from dpokit.precision import resolve as resolve_precision
from dpokit.train.batches import BatchStream, eval_batches, first_epoch_batches
from dpokit.train.engines import Engine, prepare_reference, stand_ins


def load_data(path: str, kind: str, tokenizer, cfg: RunConfig, name: str, log) -> list[TokenizedRecord]:
    """Read, clean and tokenize one file through the data pipeline (or its cache), print what it
    dropped or changed, and write the full report to ``OUTPUT/data_report_<name>.json``."""
    out = Path(cfg.train.output)
    cache_dir = (Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "data_cache") if cfg.data.cache else None
    tokenized, lines, _ = load_tokenized(path, kind, tokenizer, cfg.data, cfg.data.max_length,
                                         cfg.data.max_prompt_length, out / f"data_report_{name}.json", cache_dir)
    for line in lines:
        log(f"[data:{name}] {line}")
    if not tokenized:
        raise UserError("no usable records after tokenization and truncation", where=path)
    return tokenized


def build_policy(cfg: RunConfig):
    """(policy, starting weights for a copied reference or None)."""
    policy = load_model(cfg.model.path, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    disable_dropout(policy)
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
    return policy


def logprob_options(cfg: RunConfig) -> Options:
    """How the log-prob path lays out and chunks a batch; the policy and its reference share it."""
    t = cfg.train
    return Options(chunk=t.logprob_chunk, share_prompt=t.share_prompt, pack=t.pack)


class PendingCache:
    """A precomputed reference still to compute: under a sharding engine every forward pass is a
    collective, so the cache is computed after the policy (or ``model``) is wrapped, by
    ``finish_reference``. ``digest`` hashes the starting weights, taken while they were whole."""

    def __init__(self, model, digest: str):
        self.model, self.digest = model, digest


def build_reference(cfg: RunConfig, spec: LossSpec, policy, tokenizer, datasets: dict[str, list],
                    autocast, log, accelerator, engine: Engine | None = None):
    """The reference strategy the config asks for, built from the *starting* weights.

    Must run before LoRA is applied and before a checkpoint is loaded into the policy.
    Returns (reference or None, policy possibly wrapped with LoRA). A copied reference's model is
    placed or wrapped later, by ``finish_reference``, once the policy is prepared.
    """
    strategy = cfg.train.ref if spec.needs_reference else "none"
    ref_model = None
    if cfg.model.ref_path is not None and strategy in ("copy", "precomputed"):
        ref_model = load_model(cfg.model.ref_path, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
        disable_dropout(ref_model)
    if strategy == "copy" and ref_model is None:
        ref_model = copy.deepcopy(policy)
    reference = None
    if strategy == "precomputed":
        source = ref_model if ref_model is not None else policy
        if engine is not None and engine.sharded:
            reference = PendingCache(ref_model, ref_lib.model_hash(source))
        else:
            reference = _cached(cfg, source, tokenizer, datasets, autocast, log, accelerator)
        ref_model = None  # freed: training holds one model
    if cfg.lora.enabled:
        # A policy loaded from an adapter folder arrives merged (``load_model``), so this fresh adapter
        # starts at exactly the starting policy, and "adapter disabled" (the adapter reference) is that
        # policy, not the bare base the loaded adapter was trained on.
        torch.manual_seed(cfg.train.seed)
        policy = apply_lora(policy, cfg.lora, base=cfg.model.path)
    if strategy == "copy":
        reference = ref_lib.CopyReference(ref_model, autocast, logprob_options(cfg))
    elif strategy == "adapter":
        reference = ref_lib.AdapterReference(lambda: policy, autocast, logprob_options(cfg))
    return reference, policy


def finish_reference(cfg: RunConfig, engine: Engine, reference, policy, tokenizer, datasets: dict[str, list],
                     autocast, log):
    """After ``accelerator.prepare``: the copied reference placed or wrapped as the policy is, and
    a pending cache computed through the wrapped model (the prepared policy still holds the
    starting weights: no checkpoint has been loaded yet)."""
    if isinstance(reference, ref_lib.CopyReference):
        reference.model = prepare_reference(engine, reference.model)
    elif isinstance(reference, PendingCache):
        model = policy if reference.model is None else prepare_reference(engine, reference.model)
        reference = _cached(cfg, model, tokenizer, datasets, autocast, log, engine.accelerator, reference.digest)
    return reference


def _cached(cfg: RunConfig, model, tokenizer, datasets: dict[str, list], autocast, log, accelerator,
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
        path = folder / f"{ref_lib.cache_key(digest, tokenizer, records, settings)}.safetensors"
        if not path.is_file():
            batches, start = _precompute_batches(cfg, name, len(records), accelerator), time.perf_counter()
            # Counted before any forward pass: under a sharding engine each one is a collective, and
            # the processes with fewer batches run stand-ins (outputs dropped) to match the others.
            extra = stand_ins(batches, accelerator)
            with tqdm(total=sum(map(len, batches)), desc=f"reference log-probs ({name})", leave=False,
                      disable=not (cfg.train.progress and accelerator.is_main_process)) as bar:
                share = ref_lib.compute_reference_logps(model, records, batches, tokenizer.pad_token_id,
                                                        autocast, bar, logprob_options(cfg))
            ref_lib.compute_reference_logps(model, records, extra, tokenizer.pad_token_id, autocast,
                                            options=logprob_options(cfg))
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
    return {"dtype": resolve_precision(t.dtype, accelerator.device.type).name, "batch_size": t.batch_size,
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
