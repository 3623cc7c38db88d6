"""What a sweep optimizes, and how a finished trial is measured: the held-out metrics of its
training run, the sampled KL of its final model to the starting model, and (objectives that need
one) a judge's verdict on held-out prompts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dpokit.config import EvalConfig, RunConfig, load_config
from dpokit.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str
    """``maximize`` or ``minimize``."""
    source: str
    """Where the value is read: ``train`` (the run's last held-out metrics) or ``eval`` (the report
    of ``dpokit.eval.evaluate_models``, a judge and sampled KL)."""
    key: str
    help: str


OBJECTIVES = {o.name: o for o in (
    Objective("accuracy", "maximize", "train", "rewards/accuracies",
              "held-out reward accuracy of the implicit reward (eval/rewards/accuracies)"),
    Objective("eval_loss", "minimize", "train", "loss", "held-out loss (eval/loss)"),
    Objective("win_rate", "maximize", "eval", "win_rate", "the judge's win rate over the starting model"),
    Objective("judge_score", "maximize", "eval", "mean_score_policy",
              "the mean judge score of the policy's answers (a scorer judge)"),
    Objective("kl", "minimize", "eval", "kl_sampled", "the sampled KL(π‖π_ref) to the starting model, in nats"),
)}
PRUNE_METRIC = {"accuracy": "rewards/accuracies", "eval_loss": "loss"}
"""The held-out metric reported at each evaluation step for pruning, by objective; the judge's
objectives are measured once, at the end, so their trials are pruned on held-out reward accuracy."""


def objectives(names: list[str]) -> list[Objective]:
    if not names:
        raise UserError("is required: one or more of " + ", ".join(OBJECTIVES), where="--objective")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UserError(f"unknown objective {unknown[0]!r} (known: {', '.join(OBJECTIVES)})", where="--objective")
    if len(set(names)) < len(names):
        raise UserError("an objective is named twice", where="--objective")
    return [OBJECTIVES[n] for n in names]


def pruning_metric(objs: list[Objective]) -> str | None:
    """The held-out metric pruning watches: that of a single objective (its direction is the
    study's), none in a multi-objective study, which Optuna does not prune."""
    return PRUNE_METRIC.get(objs[0].name, "rewards/accuracies") if len(objs) == 1 else None


def eval_config(path: str | None, given: dict, cfg: RunConfig, final: Path, output: Path) -> EvalConfig:
    """The evaluation of one trial: the base's ``--eval-config`` and flags, with its model, the
    starting model as reference, and (without ``prompts``) the prompts of the run's held-out data."""
    values = {"prompts": cfg.data.eval or "", **given, "model": str(final),
              "ref_model": cfg.model.ref_path or cfg.model.path, "output": str(output), "registry": ""}
    values.setdefault("judge", "-")  # sampled KL alone needs none; evaluate() asks for one when it judges
    return load_config(path, values, root=EvalConfig)


def measure(ecfg: EvalConfig, judged: bool) -> dict:
    """The trial's evaluation report: with ``judged``, ``dpokit.eval.evaluate_models`` (win rate,
    scores, sampled KL); else only the sampled KL (the same samples and estimate, no judge)."""
    if judged:
        from dpokit.eval import evaluate_models

        if ecfg.judge == "-":
            raise UserError("this objective needs a judge (--judge package.module:function)", where="--judge")
        return evaluate_models(ecfg)
    return sampled_kl_only(ecfg)


def sampled_kl_only(ecfg: EvalConfig) -> dict:
    """Sampled KL(π‖π_ref) of ``ecfg.model`` to ``ecfg.ref_model`` on its prompts, as ``dpokit eval`` measures it."""
    from accelerate import Accelerator

    from dpokit.data import encode_prompt
    from dpokit.eval.evaluate import eval_autocast, read_prompts, sample_answers, sampled_kl
    from dpokit.policies.lm.load import disable_dropout, load_model, load_tokenizer

    accelerator = Accelerator()
    autocast = eval_autocast(ecfg, accelerator)
    tokenizer = load_tokenizer(ecfg.model, ecfg.trust_remote_code)
    models = [load_model(p, ecfg.trust_remote_code, allow_pickle=ecfg.allow_pickle) for p in (ecfg.model, ecfg.ref_model)]
    for m in models:
        disable_dropout(m)
        m.to(accelerator.device).eval()
    prompts = read_prompts(ecfg.prompts, ecfg.num_prompts)
    if not prompts:
        raise UserError("no prompts", where=ecfg.prompts)
    prompt_ids = [encode_prompt(tokenizer, p, where)[-ecfg.max_prompt_length:] for p, where in prompts]
    answers, own = sample_answers(ecfg, models[0], tokenizer, prompt_ids, autocast, with_logps=True)
    return sampled_kl(models[0], models[1], prompt_ids, answers, tokenizer.pad_token_id, ecfg.batch_size, autocast,
                      own)


def values(objs: list[Objective], train_metrics: dict, report: dict) -> list[float]:
    """The trial's value of each objective."""
    out = []
    for o in objs:
        source = train_metrics if o.source == "train" else report
        if source.get(o.key) is None:
            where = "held-out data (data.eval in the base config)" if o.source == "train" else "a scorer judge"
            raise UserError(f"objective {o.name!r} needs {where}", where="--objective")
        out.append(float(source[o.key]))
    return out


def needs_judge(objs: list[Objective]) -> bool:
    return any(o.name in ("win_rate", "judge_score") for o in objs)


def as_trial(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a trial runs it: no registry version per trial (the best config keeps the base's)."""
    return replace(cfg, train=replace(cfg.train, registry="", resume=False))
