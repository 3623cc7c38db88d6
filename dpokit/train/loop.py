"""The training loop: one loop on accelerate for SFT and every preference loss.

It never looks at a loss's name: the loss spec says which records it takes (pairs or single
completions), whether it needs reference log-probs, and what its batch loss averages over
(``dpokit.train.objective``). ``_train`` reads as the run's numbered steps.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from dpokit.config import RunConfig, save_config
from dpokit.data.mix import read_dataset
from dpokit.errors import Stopped
from dpokit.losses import LossSpec, get_loss
from dpokit.policies import build_policy_kind
from dpokit.policies.base import Policy, response_count
from dpokit.precision import machine_info, resolve as resolve_precision
from dpokit.store.atomic import verify
from dpokit.train import engines, trackers
from dpokit.train.batches import BatchStream
from dpokit.train.checkpoint import (TrainState, checkpoints, latest_checkpoint, load_checkpoint, remove_partial_writes,
                                     save_checkpoint)
from dpokit.train.guards import Action, Guard
from dpokit.train.metrics import MetricsLog, MetricSums, batch_metrics
from dpokit.train.objective import dataset_metrics, forward_loss, make_batch, unit_count
from dpokit.train.optim import LossScaling, ProximalTerm, build_optimizer, build_scheduler
from dpokit.train.register import register_run
from dpokit.train.setup import build_reference, finish_reference, record_machine
from dpokit.train.signals import StopRequest, stop_on_signals


@dataclass
class TrainResult:
    output: Path
    final: Path | None
    """The trained model; None when a signal stopped the run early."""
    steps: int
    last_metrics: dict
    eval_metrics: dict
    stopped_by: str | None = None
    """``SIGTERM`` or ``SIGINT`` when a signal stopped the run after saving ``checkpoint``;
    ``on_eval`` when that callback asked to stop (nothing saved)."""
    checkpoint: Path | None = None


EvalCallback = Callable[[int, dict], "str | None"]
"""Called after each evaluation on held-out data with (step, eval metrics); returning ``"stop"``
ends the run there, with no final model (a hyper-parameter search pruning a trial)."""


def train(cfg: RunConfig, log=print, on_eval: EvalCallback | None = None) -> TrainResult:
    """Train as ``cfg`` says. SIGTERM or SIGINT ends the run after the current optimizer step with
    a checkpoint saved (``TrainResult.stopped_by``); ``--resume`` continues it exactly. ``on_eval``
    sees each held-out evaluation and may end the run there (``EvalCallback``)."""
    with stop_on_signals() as stop:
        return _train(_pin_versions(cfg), log, stop, on_eval)


def train_within(cfg: RunConfig, what: str, log=print) -> TrainResult | None:
    """Train ``cfg`` as one step of a longer command (an online round, a quickstart stage) that a
    rerun continues: None when its final model is already complete, else the run, continued from
    its newest checkpoint where a stop left one. A signal that stops it raises ``Stopped``."""
    out = Path(cfg.train.output)
    if (out / "final").is_dir() and verify(out / "final") is None:
        return None
    cfg.train.resume = bool(checkpoints(out))
    result = train(cfg, log=log)
    if result.stopped_by:
        raise Stopped(result.stopped_by, f"{what} saved {result.checkpoint}; run the same command to continue "
                                         "from there")
    return result


def _pin_versions(cfg: RunConfig) -> RunConfig:
    """``registry:...`` models as the folders they name now, so every load of this run sees one
    model and the saved config (the base an adapter falls back to) keeps naming it after a promote."""
    from dpokit.store.versions import pin_version

    m = cfg.model
    return replace(cfg, model=replace(m, path=pin_version(m.path), ref_path=pin_version(m.ref_path)))


def _train(cfg: RunConfig, log, stop: StopRequest, on_eval: EvalCallback | None) -> TrainResult:
    """Steps 1-3 (data, models, resume) in ``_start``; 4-6 (backward, update, log/evaluate/save)
    for each optimizer step; 7 (the final model) in ``_finish``."""
    run = _start(cfg, log)
    run.on_eval = on_eval
    window = LogWindow()
    while run.state.step < run.total:
        if stop.requested(run.accelerator):  # SIGTERM / SIGINT: keep what the finished steps did, then stop
            saved = _save(run)
            run.log(f"[stop] {stop.name} at step {run.state.step}: saved {saved}; continue with --resume")
            return _ended_early(run, stop.name, saved)
        step = _backward(run)
        if _update(run, step, window):
            _at_intervals(run, window)
        if run.halted:  # the evaluation callback asked to stop: no final model
            return _ended_early(run, "on_eval")
    run.bar.close()
    return _finish(run)


def _ended_early(run: Run, why: str, saved: Path | None = None) -> TrainResult:
    run.bar.close()
    trackers.finish(run.accelerator)
    return TrainResult(run.out, None, run.state.step, run.last, run.eval_metrics, why, saved)


@dataclass
class Run:
    """What a training run holds while it steps."""

    cfg: RunConfig
    spec: LossSpec
    log: Callable[[str], None]
    accelerator: Accelerator
    engine: engines.Engine
    autocast: Callable
    scaling: LossScaling
    kind: Policy
    """The kind of policy (``dpokit.policies``): its records, batches, log-probs and saving."""
    datasets: dict[str, list]
    policy: torch.nn.Module
    reference: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: BatchStream
    total: int
    """Optimizer steps the run makes."""
    state: TrainState
    metrics_log: MetricsLog
    guard: Guard
    bar: Any
    last: dict = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)
    on_eval: EvalCallback | None = None
    eval_groups: dict = field(default_factory=dict)
    """Held-out data from several sources: each source's label -> its records' indices."""
    halted: bool = False
    """Set when ``on_eval`` asked to stop."""
    proximal: ProximalTerm | None = None
    """FedProx's pull towards the starting weights (``train.proximal_mu``), when set."""

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.output)

    @property
    def group(self) -> int:
        return response_count(self.datasets["train"])


def _start(cfg: RunConfig, log) -> Run:
    t, spec = cfg.train, get_loss(cfg.loss.name)
    out = Path(t.output)
    engines.cpu_processes_without_gpus()
    accelerator = Accelerator(**trackers.accelerator_kwargs(t))  # log_with: train.report_to
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
    if main:
        record_machine(out, machine_info(accelerator.device, precision, accelerator.num_processes))
    autocast, scaling = precision.autocast(accelerator.device), LossScaling(precision.scaler(accelerator.device))
    set_seed(t.seed)

    # 1. Data, encoded once (the LM: tokenized); the reference cache is keyed by these exact encodings.
    kind = build_policy_kind(cfg, spec)
    datasets, groups = {}, {}
    for which in ("train", "eval") if cfg.data.eval else ("train",):
        datasets[which], groups[which] = read_dataset(kind, cfg.data, which, spec.input_kind, t.seed, out, log)

    # 2. Policy and reference, both from the starting weights, before any checkpoint is loaded.
    policy = kind.load(cfg.model.path)
    reference, policy = build_reference(cfg, spec, kind, policy, datasets, autocast, log, accelerator, engine)
    stream = BatchStream(len(datasets["train"]), t.batch_size, t.grad_accum, t.seed, accelerator.num_processes,
                         accelerator.process_index)
    total = t.max_steps if t.max_steps > 0 else t.epochs * stream.steps_per_epoch
    optimizer = build_optimizer(policy.parameters(), t)
    scheduler = build_scheduler(optimizer, t, total)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    reference = finish_reference(cfg, engine, kind, reference, policy, datasets, autocast, log)

    # The proximal term's anchor is the starting weights, taken before a checkpoint replaces them.
    proximal = ProximalTerm(policy.parameters(), t.proximal_mu) if t.proximal_mu > 0 else None

    # 3. Resume: weights, optimizer, schedule, RNG and data position from the newest checkpoint.
    state = TrainState()
    if t.resume and main:
        remove_partial_writes(out)  # a run killed while writing leaves a hidden .tmp folder
    ckpt = latest_checkpoint(out, log) if t.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, engines.unwrap(engine, policy), optimizer, scheduler, engine, _moving(reference))
        scaling.load_state_dict(state.loss_scale)
        log(f"[resume] from {ckpt} at step {state.step}")
    metrics_log = MetricsLog(out / "metrics.jsonl", state.step if t.resume else None, enabled=main)
    trackers.start(accelerator, t, cfg.to_dict(), first_step=state.step + 1)
    policy.train()
    bar = tqdm(total=total, initial=state.step, desc=f"{spec.name}", disable=not (t.progress and main))
    return Run(cfg, spec, log, accelerator, engine, autocast, scaling, kind, datasets, policy, reference,
               optimizer, scheduler, stream, total, state, metrics_log, Guard(cfg.guard, state), bar,
               eval_groups=groups.get("eval", {}), proximal=proximal)


@dataclass
class Backward:
    """One optimizer step's backward passes: the step's loss (this process's share), metrics,
    real tokens, the clipped gradient norm and the loss summed over processes."""

    loss: float
    sums: MetricSums
    tokens: int
    grad_norm: float
    total_loss: torch.Tensor


def _backward(run: Run) -> Backward:
    """4. One optimizer step's backward passes over k micro-batches. Each micro-batch loss is its
    sum of per-example losses over the *whole step's* count, so the k backward passes add up to
    the gradient of the full-batch mean, exactly."""
    acc, spec, group, t = run.accelerator, run.spec, run.group, run.cfg.train
    batches = [make_batch(run.kind, run.datasets["train"], ix, "train", acc.device)
               for ix in run.stream.next_step(run.state)]
    denom = acc.reduce(torch.tensor(float(sum(unit_count(spec, b) for b in batches)), device=acc.device), "sum")
    denom = denom / acc.num_processes  # DDP, FSDP and DeepSpeed average gradients over processes
    step_loss, sums, tokens = 0.0, MetricSums(), 0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        if run.engine.deepspeed:  # DeepSpeed steps inside backward, at the micro-batch that ends the step
            acc.gradient_state._set_sync_gradients(last)
        with contextlib.nullcontext() if last else acc.no_sync(run.policy):
            pol, ref, lo = forward_loss(spec, run.cfg.loss, run.kind, run.policy, run.reference, batch, group,
                                        run.autocast, run.state.loss_state, acc.gather)  # shares are equal: BatchStream pads
            loss = lo.losses.sum() / denom
            acc.backward(run.scaling.scale(loss))
        step_loss += loss.item()
        sums.merge(batch_metrics(spec.input_kind, pol, ref, lo))
        tokens += run.kind.real_tokens(batch, group, spec.input_kind)
    run.scaling.unscale(run.optimizer)
    if run.proximal is not None:
        run.proximal.add_gradient()
    grad_norm = acc.clip_grad_norm_(run.policy.parameters(), t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
    if grad_norm is None:  # DeepSpeed has no norm before its first step
        grad_norm = float("nan")
    total_loss = acc.reduce(torch.tensor(step_loss, device=acc.device), "sum")  # the same on every process
    return Backward(step_loss, sums, tokens, grad_norm, total_loss)


def _update(run: Run, step: Backward, window: LogWindow) -> bool:
    """5. The optimizer step, unless fp16 overflowed or a guard skips it (not counted; too many
    skips in a row roll back). Whether the step counted."""
    if run.scaling.overflowed(float(step.total_loss), step.grad_norm):  # fp16: the scale was too high
        run.optimizer.zero_grad(set_to_none=True)
        run.log(f"[fp16] gradients overflowed after step {run.state.step}: step skipped, "
                f"loss scale now {run.scaling.value:g}")
        return False
    action = run.guard.check_step(step.total_loss, step.grad_norm)
    if action is not Action.OK:
        run.optimizer.zero_grad(set_to_none=True)
        run.log(f"[guard] skipped a step after step {run.state.step}: {run.guard.reason}")
        if action is Action.ROLLBACK:
            _roll_back(run, window)
        return False
    window.add_step(step, run.scheduler.get_last_lr()[0])
    run.scaling.step(run.optimizer)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    if run.reference is not None:  # TR-DPO: a moving reference follows the policy
        run.reference.after_step(engines.unwrap(run.engine, run.policy), run.state.step)
    run.state.loss_scale = run.scaling.state_dict()
    run.bar.update(1)
    return True


def _at_intervals(run: Run, window: LogWindow) -> None:
    """6. Log, evaluate and save at their intervals; a watched metric that collapsed rolls back
    before this step is saved."""
    t, state, acc = run.cfg.train, run.state, run.accelerator
    fresh: dict = {}
    if state.step % t.logging_steps == 0 or state.step == run.total:
        run.last = {"step": state.step, "epoch": state.epoch + state.position / len(run.datasets["train"]),
                    **window.metrics(acc)}
        if run.cfg.guard.enabled:
            run.last["guard/skipped_steps"] = run.guard.skipped
        fresh.update(run.last)
        run.metrics_log.write(run.last)
        run.bar.set_postfix(loss=f"{run.last['loss']:.4f}", **({"acc": f"{run.last['rewards/accuracies']:.2f}"}
                                                              if "rewards/accuracies" in run.last else {}))
        window.reset()
    if "eval" in run.datasets and ((t.eval_steps and state.step % t.eval_steps == 0) or state.step == run.total):
        run.eval_metrics = dataset_metrics(run.spec, run.cfg.loss, t.batch_size, run.kind, run.policy, run.reference,
                                           run.datasets["eval"], run.autocast, acc, state.loss_state)
        evals = {f"eval/{k}": v for k, v in run.eval_metrics.items()}
        for label, indices in run.eval_groups.items():  # each source's own metrics
            part = dataset_metrics(run.spec, run.cfg.loss, t.batch_size, run.kind, run.policy, run.reference,
                                   run.datasets["eval"], run.autocast, acc, state.loss_state, indices)
            evals.update({f"eval/{label}/{k}": v for k, v in part.items()})
        run.metrics_log.write({"step": state.step, **evals})
        fresh.update(evals)
        if run.on_eval is not None and run.on_eval(state.step, run.eval_metrics) == "stop":
            run.halted = True
    trackers.log(acc, fresh, state.step)
    if run.halted:
        return
    if run.guard.check_metrics(fresh) is Action.ROLLBACK:
        _roll_back(run, window)
    elif t.save_steps and state.step % t.save_steps == 0 and state.step < run.total:
        _save(run)


def _moving(reference) -> Any:
    """The reference's model when it moves during training (TR-DPO): checkpoints hold its weights."""
    return reference.model if getattr(reference, "moves", False) else None


def _roll_back(run: Run, window: LogWindow) -> None:
    """The newest checkpoint's state with a lower learning rate; the steps since are undone, so
    the log window forgets them too."""
    run.state = run.guard.roll_back(run.out, run.state, engines.unwrap(run.engine, run.policy), run.optimizer,
                                    run.scheduler, run.cfg.train.lr, run.log, run.metrics_log, run.engine,
                                    _moving(run.reference))
    run.bar.n = run.state.step
    window.reset()


def _finish(run: Run) -> TrainResult:
    """7. The final model, loadable with from_pretrained (LoRA: the adapter, or merged)."""
    final = run.out / "final"
    result = TrainResult(run.out, final, run.state.step, run.last, run.eval_metrics)
    weights = engines.gather_weights(run.engine, run.policy)  # a collective under sharding engines
    if run.accelerator.is_main_process:
        run.kind.save(engines.unwrap(run.engine, run.policy), final, weights)
        register_run(run.cfg, result, run.kind, run.datasets, run.log)  # a new version in train.registry, when set
    trackers.finish(run.accelerator)
    run.accelerator.wait_for_everyone()
    return result


class LogWindow:
    """The counted optimizer steps since the last log line: their metrics, real tokens and time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums, self.tokens, self.steps, self.start = MetricSums(), 0, 0, time.perf_counter()

    def add_step(self, step: Backward, lr: float) -> None:
        self.sums.merge(step.sums)
        self.sums.add("grad_norm", step.grad_norm, 1)
        self.sums.add("loss", step.loss, 1)
        self.sums.add("lr", lr, 1)
        self.tokens += step.tokens
        self.steps += 1

    def metrics(self, accelerator) -> dict:
        """The window's means over every process, with tokens per second and seconds per step."""
        elapsed = time.perf_counter() - self.start
        tokens = accelerator.reduce(torch.tensor(self.tokens, device=accelerator.device), "sum").item()
        return {**self.sums.gathered(accelerator).means(), "tokens_per_s": tokens / max(elapsed, 1e-9),
                "step_s": elapsed / max(self.steps, 1)}


def _save(run: Run) -> Path | None:
    """``checkpoint-STEP``: states gathered on every process (sharding engines), written by the main
    one. Under DeepSpeed none is written (``engines._check`` refuses --save-steps and --resume there)."""
    if run.engine.deepspeed:
        return None
    gathered = engines.gather_states(run.engine, run.policy, run.optimizer)
    saved = run.out / f"checkpoint-{run.state.step}"
    if run.accelerator.is_main_process:
        saved = save_checkpoint(run.out, run.state, engines.unwrap(run.engine, run.policy), run.optimizer,
                                run.scheduler, run.cfg, run.last, run.eval_metrics, gathered,
                                _moving(run.reference))
    run.accelerator.wait_for_everyone()
    return saved
