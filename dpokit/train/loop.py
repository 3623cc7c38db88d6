"""The training loop: one loop on accelerate for SFT and every preference loss.

It never looks at a loss's name: the loss spec says which records it takes (pairs or single
completions), whether it needs reference log-probs, and what its batch loss averages over.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dpokit.config import RunConfig, save_config
from dpokit.data import TokenizedRecord, collate
from dpokit.logprobs import completion_logps, logps_from_log_probs
from dpokit.losses import LossContext, LossSpec, get_loss
from dpokit.models import load_tokenizer
from dpokit.precision import resolve as resolve_precision
from dpokit.train.batches import BatchStream, eval_batches
from dpokit.train.checkpoint import (TrainState, latest_checkpoint, load_checkpoint, remove_partial_writes,
                                     save_checkpoint, save_model)
from dpokit.train import engines
from dpokit.train.guards import Action, Guard
from dpokit.train.metrics import MetricsLog, MetricSums, batch_metrics, real_tokens
from dpokit.train.optim import LossScaling, build_optimizer, build_scheduler
from dpokit.train.setup import build_policy, build_reference, finish_reference, load_data, logprob_options
from dpokit.train.signals import StopRequest, stop_on_signals
from dpokit.versions import register_run


@dataclass
class TrainResult:
    output: Path
    final: Path | None
    """The trained model; None when a signal stopped the run early."""
    steps: int
    last_metrics: dict
    eval_metrics: dict
    stopped_by: str | None = None
    """``SIGTERM`` or ``SIGINT`` when a signal stopped the run after saving ``checkpoint``."""
    checkpoint: Path | None = None


def make_batch(records: list[TokenizedRecord], indices: list[int], pad_id: int, dataset: str, device) -> dict:
    batch = {k: v.to(device) for k, v in collate([records[i] for i in indices], pad_id).items()}
    batch["index"], batch["dataset"] = torch.tensor(indices), dataset
    return batch


def unit_count(spec: LossSpec, batch: dict, group_size: int) -> int:
    """What the batch loss is averaged over: examples, or completion tokens."""
    if spec.unit == "token":
        return int(batch["completion_mask"].sum())
    return batch["input_ids"].shape[0] // group_size


def forward_loss(spec: LossSpec, cfg: RunConfig, policy, reference, batch: dict, group: int, autocast,
                 state: dict, gather=None):
    """Policy (and reference) log-probs of a batch, then the loss's per-example output,
    weighted by each record's weight. ``gather`` concatenates a tensor over processes (training
    steps only: evaluation shards may differ in size, so their statistics stay per batch)."""
    ref_log_probs = reference.log_probs(batch, group) if spec.token_kl else None
    with autocast():
        pol = completion_logps(policy, batch, group, ref_log_probs, logprob_options(cfg))
    if ref_log_probs is not None:
        ref = logps_from_log_probs(ref_log_probs, batch, group)
    else:
        ref = reference.logps(batch, group) if reference is not None else None
    ctx = LossContext(batch.get("labels"), state, policy.training)
    if gather is not None:
        ctx.gather = gather
    out = spec.fn(pol, ref, cfg.loss, ctx)
    out.losses = out.losses * batch["weights"]
    return pol, ref, out


@torch.no_grad()
def evaluate(spec: LossSpec, cfg: RunConfig, policy, reference, records: list[TokenizedRecord],
             pad_id: int, autocast, accelerator: Accelerator, state: dict | None = None) -> dict[str, float]:
    """The training metrics over a whole dataset, each averaged exactly; on several processes
    each evaluates every P-th record and the sums are gathered."""
    was_training = policy.training
    policy.eval()
    group = len(records[0].completion_ids)
    sums = MetricSums()
    batches = eval_batches(len(records), cfg.train.batch_size, accelerator.num_processes,
                           accelerator.process_index)
    extra = engines.stand_ins(batches, accelerator)  # before any (collective) forward pass
    for indices in batches:
        batch = make_batch(records, indices, pad_id, "eval", accelerator.device)
        pol, ref, out = forward_loss(spec, cfg, policy, reference, batch, group, autocast, state or {})
        sums.add("loss", out.losses.sum(), unit_count(spec, batch, group))
        sums.merge(batch_metrics(spec.input_kind, pol, ref, out))
    for indices in extra:  # outputs dropped: as many forward passes as the busiest process
        batch = make_batch(records, indices, pad_id, "eval", accelerator.device)
        forward_loss(spec, cfg, policy, reference, batch, group, autocast, state or {})
    policy.train(was_training)
    return sums.gathered(accelerator).means()


def train(cfg: RunConfig, log=print) -> TrainResult:
    """Train as ``cfg`` says. SIGTERM or SIGINT ends the run after the current optimizer step with
    a checkpoint saved (``TrainResult.stopped_by``); ``--resume`` continues it exactly."""
    with stop_on_signals() as stop:
        return _train(_pin_versions(cfg), log, stop)


def _pin_versions(cfg: RunConfig) -> RunConfig:
    """``registry:...`` models as the folders they name now, so every load of this run sees one
    model and the saved config (the base an adapter falls back to) keeps naming it after a promote."""
    from dpokit.model_paths import pin_version

    m = cfg.model
    return replace(cfg, model=replace(m, path=pin_version(m.path), ref_path=pin_version(m.ref_path)))


def _train(cfg: RunConfig, log, stop: StopRequest) -> TrainResult:
    t, spec = cfg.train, get_loss(cfg.loss.name)
    out = Path(t.output)
    engines.cpu_processes_without_gpus()
    accelerator = Accelerator()
    engine = engines.resolve(accelerator, cfg)  # DDP (or one process), FSDP2, or DeepSpeed ZeRO-2/3
    main = accelerator.is_main_process
    log = log if main else (lambda *_: None)
    if accelerator.num_processes > 1:
        log(f"[engine] {engine.name} on {accelerator.num_processes} processes ({accelerator.device.type})")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    accelerator.wait_for_everyone()
    precision = resolve_precision(t.dtype, accelerator.device.type)
    log(f"[precision] {precision.name}: {precision.reason}")
    engines.check_precision(engine, precision)
    autocast, scaling = precision.autocast(accelerator.device), LossScaling(precision.scaler(accelerator.device))
    set_seed(t.seed)

    # 1. Data, tokenized once; the reference cache is keyed by these exact token ids.
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    datasets = {"train": load_data(cfg.data.train, spec.input_kind, tokenizer, cfg, "train", log)}
    if cfg.data.eval:
        datasets["eval"] = load_data(cfg.data.eval, spec.input_kind, tokenizer, cfg, "eval", log)
    train_records, pad_id = datasets["train"], tokenizer.pad_token_id
    group = len(train_records[0].completion_ids)

    # 2. Policy and reference, both from the starting weights, before any checkpoint is loaded.
    policy = build_policy(cfg)
    reference, policy = build_reference(cfg, spec, policy, tokenizer, datasets, autocast, log, accelerator, engine)
    stream = BatchStream(len(train_records), t.batch_size, t.grad_accum, t.seed, accelerator.num_processes,
                         accelerator.process_index)
    total = t.max_steps if t.max_steps > 0 else t.epochs * stream.steps_per_epoch
    optimizer = build_optimizer(policy.parameters(), t)
    scheduler = build_scheduler(optimizer, t, total)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    reference = finish_reference(cfg, engine, reference, policy, tokenizer, datasets, autocast, log)

    # 3. Resume: weights, optimizer, schedule, RNG and data position from the newest checkpoint.
    state = TrainState()
    if t.resume and main:
        remove_partial_writes(out)  # a run killed while writing leaves a hidden .tmp folder
    ckpt = latest_checkpoint(out, log) if t.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, engines.unwrap(engine, policy), optimizer, scheduler, engine)
        scaling.load_state_dict(state.loss_scale)
        log(f"[resume] from {ckpt} at step {state.step}")
    metrics_log = MetricsLog(out / "metrics.jsonl", state.step if t.resume else None, enabled=main)
    guard = Guard(cfg.guard, state)

    policy.train()
    window, window_tokens, window_steps, window_start = MetricSums(), 0, 0, time.perf_counter()
    bar = tqdm(total=total, initial=state.step, desc=f"{spec.name}", disable=not (t.progress and main))
    last: dict = {}
    eval_metrics: dict = {}
    while state.step < total:
        if stop.requested(accelerator):  # SIGTERM / SIGINT: keep what the finished steps did, then stop
            saved = _save(engine, out, state, policy, optimizer, scheduler, cfg, last, eval_metrics)
            bar.close()
            log(f"[stop] {stop.name} at step {state.step}: saved {saved}; continue with --resume")
            return TrainResult(out, None, state.step, last, eval_metrics, stop.name, saved)
        # 4. One optimizer step over k micro-batches. Each micro-batch loss is its sum of
        #    per-example losses over the *whole step's* count, so the k backward passes add
        #    up to the gradient of the full-batch mean, exactly.
        batches = [make_batch(train_records, ix, pad_id, "train", accelerator.device)
                   for ix in stream.next_step(state)]
        denom = accelerator.reduce(torch.tensor(float(sum(unit_count(spec, b, group) for b in batches)),
                                                device=accelerator.device), "sum")
        denom = denom / accelerator.num_processes  # DDP, FSDP and DeepSpeed average gradients over processes
        step_loss, step_sums, step_tokens = 0.0, MetricSums(), 0
        for i, batch in enumerate(batches):
            sync = contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(policy)
            if engine.deepspeed:  # DeepSpeed steps inside backward, at the micro-batch that ends the step
                accelerator.gradient_state._set_sync_gradients(i == len(batches) - 1)
            with sync:
                pol, ref, lo = forward_loss(spec, cfg, policy, reference, batch, group, autocast, state.loss_state,
                                            accelerator.gather)  # shares are equal: BatchStream pads
                loss = lo.losses.sum() / denom
                accelerator.backward(scaling.scale(loss))
            step_loss += loss.item()
            step_sums.merge(batch_metrics(spec.input_kind, pol, ref, lo))
            step_tokens += real_tokens(spec.input_kind, batch, group)
        scaling.unscale(optimizer)
        grad_norm = accelerator.clip_grad_norm_(policy.parameters(), t.max_grad_norm if t.max_grad_norm > 0
                                                else float("inf"))
        if grad_norm is None:  # DeepSpeed has no norm before its first step
            grad_norm = float("nan")
        total_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "sum")  # same on all
        if scaling.overflowed(float(total_loss), grad_norm):  # fp16: the scale was too high for these gradients
            optimizer.zero_grad(set_to_none=True)
            log(f"[fp16] gradients overflowed after step {state.step}: step skipped, loss scale now {scaling.value:g}")
            continue
        # 5. Guards: a non-finite step is skipped (not counted); too many in a row roll back.
        action = guard.check_step(total_loss, grad_norm)
        if action is not Action.OK:
            optimizer.zero_grad(set_to_none=True)
            log(f"[guard] skipped a step after step {state.step}: {guard.reason}")
            if action is Action.ROLLBACK:
                state = guard.roll_back(out, state, engines.unwrap(engine, policy), optimizer, scheduler, t.lr,
                                        log, metrics_log, engine)
                bar.n, window, window_tokens, window_steps = state.step, MetricSums(), 0, 0  # those steps were undone
            continue
        window.merge(step_sums)
        window_tokens += step_tokens
        window.add("grad_norm", grad_norm, 1)
        window.add("loss", step_loss, 1)
        window.add("lr", scheduler.get_last_lr()[0], 1)
        scaling.step(optimizer)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.loss_scale = scaling.state_dict()
        window_steps += 1
        bar.update(1)

        # 6. Log, evaluate and save at their intervals; a watched metric that collapsed rolls back
        #    before this step is saved.
        fresh: dict = {}
        if state.step % t.logging_steps == 0 or state.step == total:
            elapsed = time.perf_counter() - window_start
            tokens = accelerator.reduce(torch.tensor(window_tokens, device=accelerator.device), "sum").item()
            last = {"step": state.step, "epoch": state.epoch + state.position / len(train_records),
                    **window.gathered(accelerator).means(), "tokens_per_s": tokens / max(elapsed, 1e-9),
                    "step_s": elapsed / max(window_steps, 1)}
            if cfg.guard.enabled:
                last["guard/skipped_steps"] = guard.skipped
            fresh.update(last)
            metrics_log.write(last)
            bar.set_postfix(loss=f"{last['loss']:.4f}", **({"acc": f"{last['rewards/accuracies']:.2f}"}
                                                          if "rewards/accuracies" in last else {}))
            window, window_tokens, window_steps, window_start = MetricSums(), 0, 0, time.perf_counter()
        if "eval" in datasets and ((t.eval_steps and state.step % t.eval_steps == 0) or state.step == total):
            eval_metrics = evaluate(spec, cfg, policy, reference, datasets["eval"], pad_id, autocast,
                                    accelerator, state.loss_state)
            metrics_log.write({"step": state.step, **{f"eval/{k}": v for k, v in eval_metrics.items()}})
            fresh.update({f"eval/{k}": v for k, v in eval_metrics.items()})
        if guard.check_metrics(fresh) is Action.ROLLBACK:
            state = guard.roll_back(out, state, engines.unwrap(engine, policy), optimizer, scheduler, t.lr, log,
                                    metrics_log, engine)
            bar.n, window, window_tokens, window_steps = state.step, MetricSums(), 0, 0
            continue
        if t.save_steps and state.step % t.save_steps == 0 and state.step < total:
            _save(engine, out, state, policy, optimizer, scheduler, cfg, last, eval_metrics)
    bar.close()

    # 7. The final model, loadable with from_pretrained (LoRA: the adapter, or merged).
    final = out / "final"
    result = TrainResult(out, final, state.step, last, eval_metrics)
    weights = engines.gather_weights(engine, policy)  # a collective under sharding engines
    if main:
        save_model(engines.unwrap(engine, policy), final, merge_lora=cfg.lora.merge, tokenizer=tokenizer,
                   weights=weights)
        register_run(cfg, result, datasets, log)  # a new version in train.registry, when set
    accelerator.wait_for_everyone()
    return result


def _save(engine: engines.Engine, out: Path, state: TrainState, policy, optimizer, scheduler, cfg: RunConfig,
          metrics: dict, eval_metrics: dict) -> Path | None:
    """``checkpoint-STEP``: states gathered on every process (sharding engines), written by the main
    one. Under DeepSpeed none is written (``engines._check`` refuses --save-steps and --resume there)."""
    if engine.deepspeed:
        return None
    gathered = engines.gather_states(engine, policy, optimizer)
    saved = out / f"checkpoint-{state.step}"
    if engine.accelerator.is_main_process:
        saved = save_checkpoint(out, state, engines.unwrap(engine, policy), optimizer, scheduler, cfg, metrics,
                                eval_metrics, gathered)
    engine.accelerator.wait_for_everyone()
    return saved
