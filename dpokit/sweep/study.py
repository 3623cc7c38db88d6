"""A sweep on an Optuna study: each trial is a real training run (``dpokit.train.train``) of the
base config with the trial's values, in ``OUTPUT/trial-N``; Optuna samples, prunes and keeps the
record in its storage (SQLite ``OUTPUT/study.db`` by default, any SQLAlchemy URL), so a rerun of
the same command continues the study.

A trial left RUNNING by a process that died (SIGKILL, a lost node) is marked FAIL and its values
are queued again as a new trial (Optuna's ``RetryFailedTrialCallback``): at once when it ran on
this machine and its process is gone, else once its heartbeat is older than the grace period.
A trial's number is never reused, so no trial counts twice.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpokit.config import load_config
from dpokit.errors import Stopped, UserError
from dpokit.sweep import objectives as objs
from dpokit.sweep.space import Param, check_against, describe, grid_space, read_space

SAMPLERS = ("tpe", "random", "grid")
FINISHED = ("COMPLETE", "PRUNED")
"""The states a trial counts towards ``--trials`` in."""
MAX_RETRY = 2
"""How often a trial killed mid-run is run again before it stays FAIL (a setting that kills its process)."""


@dataclass
class SweepSettings:
    """Everything ``dpokit sweep`` was asked, picklable for the worker processes of ``--jobs``."""

    config: str
    space: str
    output: str
    trials: int
    objectives: list[str]
    sampler: str = "tpe"
    storage: str | None = None
    study_name: str | None = None
    jobs: int = 1
    keep: str = "all"
    max_kl: float | None = None
    eval_config: str | None = None
    eval_overrides: dict = field(default_factory=dict)
    """EvalConfig fields given as flags (``--judge``, ``--prompts``)."""
    prune: bool = True
    prune_startup_trials: int = 4
    heartbeat: int = 10
    seed: int = 0

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.output).resolve() / 'study.db'}"

    @property
    def name(self) -> str:
        return self.study_name or Path(self.output).resolve().name


def load_optuna():
    """Optuna, or a one-line error naming the extra that installs it."""
    try:
        import optuna as module
    except ImportError:
        raise UserError('needs Optuna: pip install "dpokit[sweep]"', where="dpokit sweep") from None
    import warnings

    module.logging.set_verbosity(module.logging.WARNING)
    # heartbeats and their retry callback are marked experimental; they are what resuming rests on
    warnings.filterwarnings("ignore", category=module.exceptions.ExperimentalWarning)
    return module


def _retry():
    """Optuna's callback that queues a dead trial's values again as a new trial."""
    return load_optuna().storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def check(s: SweepSettings) -> list[Param]:
    """Every setting, the base config and the space, checked before anything runs."""
    problems = [(s.trials < 1, "--trials", "must be ≥ 1"), (s.jobs < 1, "--jobs", "must be ≥ 1"),
                (s.sampler not in SAMPLERS, "--sampler", f"must be one of {', '.join(SAMPLERS)}"),
                (s.max_kl is not None and not s.max_kl > 0, "--max-kl", "must be > 0"),
                (s.heartbeat < 1, "--heartbeat", "must be ≥ 1 second"),
                (s.keep not in ("best", "all"), "--keep", "must be best or all")]
    for bad, where, msg in problems:
        if bad:
            raise UserError(msg, where=where)
    goals = objs.objectives(s.objectives)
    cfg = load_config(s.config)
    if not cfg.data.eval:  # the objectives, pruning and (by default) the KL prompts all read it
        raise UserError("a sweep measures every trial on held-out data: set data.eval in the base config",
                        where=s.config, field="data.eval")
    if objs.needs_judge(goals) and not s.eval_overrides.get("judge"):
        raise UserError("this objective needs a judge (--judge package.module:function)", where="--objective")
    params = read_space(s.space, grid=s.sampler == "grid")
    check_against(params, s.config)
    return params


def open_study(s: SweepSettings, params: list[Param], worker: int = 0):
    """The study in its storage, created on the first run, checked against the settings on a rerun."""
    op = load_optuna()
    Path(s.output).mkdir(parents=True, exist_ok=True)
    storage = op.storages.RDBStorage(
        s.storage_url, engine_kwargs={"connect_args": {"timeout": 60}} if s.storage_url.startswith("sqlite") else None,
        heartbeat_interval=s.heartbeat, grace_period=3 * s.heartbeat,
        heartbeat_stale_trial_callback=_retry())
    goals = objs.objectives(s.objectives)
    study = op.create_study(storage=storage, study_name=s.name, load_if_exists=True, sampler=op.samplers.RandomSampler(),
                            pruner=op.pruners.MedianPruner(n_startup_trials=s.prune_startup_trials),
                            directions=[g.direction for g in goals])
    # A seeded sampler draws the same sequence in every process: offset by the trials the study
    # holds (a rerun) and by the worker (--jobs), or a resumed or parallel sweep repeats settings.
    study.sampler = _sampler(s, params, s.seed + len(study.get_trials(deepcopy=False)) + 7919 * worker)
    recorded = {"objectives": s.objectives, "space": describe(params), "sampler": s.sampler, "max_kl": s.max_kl}
    saved = study.user_attrs
    for key, value in recorded.items():
        before = saved.get(key)
        if key not in saved:
            study.set_user_attr(key, value)
        elif before != value:
            raise UserError(f"study {s.name!r} was run with other {key} ({before}); give another --study-name "
                            "or --output", where=s.storage_url if s.storage else s.output)
    return study


def _sampler(s: SweepSettings, params: list[Param], seed: int):
    op = load_optuna()
    if s.sampler == "grid":
        return op.samplers.GridSampler(grid_space(params), seed=seed)
    if s.sampler == "random":
        return op.samplers.RandomSampler(seed=seed)
    # TPE steers away from the trials whose constraint (trial.set_constraint, below) is above 0
    return op.samplers.TPESampler(seed=seed, n_startup_trials=min(10, s.trials // 3 or 1))


def fail_dead_trials(study) -> list[int]:
    """Trials RUNNING under a process of this machine that no longer exists: FAIL, values queued
    again. (Other machines' trials are left to the heartbeat.) The numbers failed."""
    op = load_optuna()
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(op.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if not owner or owner[0] != host or _alive(owner[1]):
            continue
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=op.trial.TrialState.FAIL):
                _retry()(study, study._storage.get_trial(t._trial_id))
                failed.append(t.number)
        except op.exceptions.UpdateFinishedTrialError:  # another process got there first
            pass
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished(study) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def trial_objective(s: SweepSettings, params: list[Param], log=print):
    """The function Optuna calls for each trial."""
    op = load_optuna()
    goals = objs.objectives(s.objectives)
    judged = objs.needs_judge(goals)
    watched = objs.pruning_metric(goals)

    def run(trial) -> Any:
        from dpokit.train import train

        trial.set_user_attr("owner", [socket.gethostname(), os.getpid()])
        values = {p.name: p.suggest(trial) for p in params}
        out = Path(s.output) / f"trial-{trial.number}"
        cfg = objs.as_trial(load_config(s.config, {**values, "train.output": str(out)}))
        start = time.perf_counter()

        def report(step: int, metrics: dict) -> str | None:
            if watched is None or not s.prune or metrics.get(watched) is None:
                return None
            trial.report(float(metrics[watched]), step)
            return "stop" if trial.should_prune() else None

        log(f"[sweep] trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        result = train(cfg, log=lambda *_: None, on_eval=report)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        if result.stopped_by == "on_eval":
            trial.set_user_attr("pruned_at", result.steps)
            raise op.TrialPruned(f"pruned at step {result.steps}")
        if result.stopped_by:  # SIGTERM / SIGINT: the trial stays RUNNING; a rerun fails it and runs it again
            raise Stopped(result.stopped_by, "finished trials are in the study; run the same command to continue")
        report_ = objs.measure(objs.eval_config(s.eval_config, s.eval_overrides, cfg, result.final, out / "eval"),
                               judged)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("kl", report_["kl_sampled"])
        trial.set_user_attr("eval_metrics", result.eval_metrics)
        if s.max_kl is not None:  # feasible where ≤ 0; samplers that take constraints read it
            trial.set_constraint("kl", report_["kl_sampled"] - s.max_kl)
        got = objs.values(goals, result.eval_metrics, report_)
        return got[0] if len(got) == 1 else got

    return run


def run_trials(s: SweepSettings, params: list[Param], count: int, log=print, worker: int = 0) -> None:
    """Run up to ``count`` trials in this process, stopping early once the study holds ``s.trials``
    finished ones (other processes may be running trials of it too)."""
    op = load_optuna()
    study = open_study(s, params, worker)
    stop_at = op.study.MaxTrialsCallback(s.trials, states=tuple(getattr(op.trial.TrialState, n) for n in FINISHED))
    study.optimize(trial_objective(s, params, log), n_trials=count, callbacks=[stop_at])


def _worker(s: SweepSettings, params: list[Param], count: int, threads: int, worker: int) -> None:
    import torch

    torch.set_num_threads(threads)
    run_trials(s, params, count, print, worker)


def sweep(s: SweepSettings, log=print):
    """Run the sweep to ``s.trials`` finished trials and write its outputs; the study."""
    params = check(s)
    study = open_study(s, params)
    for n in fail_dead_trials(study):
        log(f"[sweep] trial {n} was left running by a process that is gone: failed, its values queued again")
    todo = max(0, s.trials - finished(study))
    log(f"[sweep] study {s.name!r} in {s.storage_url}: {s.trials - todo} of {s.trials} trials finished")
    if todo and s.jobs == 1:
        run_trials(s, params, todo, log)
    elif todo:
        _parallel(s, params, todo)
    from dpokit.sweep.outputs import write_outputs

    return write_outputs(s, open_study(s, params), log)


def _parallel(s: SweepSettings, params: list[Param], todo: int) -> None:
    """``s.jobs`` processes on the same storage, sharing the trials left and the CPU cores."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch or DB state
    jobs = min(s.jobs, todo)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    procs = [ctx.Process(target=_worker, args=(s, params, todo // jobs + (i < todo % jobs), threads, i + 1))
             for i in range(jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise UserError(f"{len(bad)} of {jobs} worker processes failed (exit {bad[0]}); finished trials are kept, "
                        "run the same command to continue", where="--jobs")
