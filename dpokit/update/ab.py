"""The A/B evaluation of an update: the challenger against the champion on held-out prompts and pairs.

- On the prompts, as ``dpokit eval`` with the champion as the reference: the judge's win rate of
  the challenger with its 95% interval, the sampled KL of the challenger to the champion, and each
  side's mean answer length.
- On each held-out pair file, the reward accuracy of the challenger and of the champion, both
  under the implicit reward against the base model the lineage started from. One anchor for both
  sides makes the two accuracies comparable: this is how the rule sees forgetting (an earlier
  task's accuracy falling) as well as gains. The challenger's accuracy against the champion (the
  update's own implicit reward) is reported too.
"""

from __future__ import annotations

from pathlib import Path

from dpokit.config import EvalConfig
from dpokit.store.versions import Registry


def ab_figures(cfg, registry: Registry, state: dict, folder: Path, log) -> dict:
    """The figures the rule decides on (``decision.decide``) and the registry keeps."""
    from dpokit.update.run import lineage_base

    u, m = cfg.update, cfg.model
    ecfg = EvalConfig(model=registry.get(state["challenger"])["model"], ref_model=registry.get(state["champion"])["model"],
                      prompts=u.eval_prompts, judge=u.judge, beta=cfg.loss.beta, max_new_tokens=u.max_new_tokens,
                      num_prompts=u.eval_num_prompts, batch_size=u.generation_batch_size,
                      max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length,
                      seed=cfg.train.seed, dtype=cfg.train.dtype, output=str(folder / "eval"),
                      trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle, registry="")
    return compare(ecfg.validate(), lineage_base(registry, state["champion"]), u.pair_files(), log)


def compare(ecfg: EvalConfig, base: str, pair_files: list[str], log) -> dict:
    """``ecfg.model`` (the new model) against ``ecfg.ref_model`` (the old one): the judge on the
    prompts, the sampled KL, and on each pair file both models' accuracy against ``base``."""
    from accelerate import Accelerator

    from dpokit.eval import evaluate_models
    from dpokit.eval.evaluate import eval_autocast, pair_metrics
    from dpokit.policies.lm.load import load_model, load_tokenizer

    paths = {"new": ecfg.model, "old": ecfg.ref_model, "base": base}
    tokenizer = load_tokenizer(ecfg.ref_model, ecfg.trust_remote_code)
    models = {}
    for name, path in paths.items():
        same = next((models[k] for k in models if paths[k] == path), None)
        models[name] = same or load_model(path, ecfg.trust_remote_code, allow_pickle=ecfg.allow_pickle)
    report = evaluate_models(ecfg, policy=models["new"], reference=models["old"], tokenizer=tokenizer)
    low, high = report["win_rate_ci95"]
    figures = {"prompts": report["prompts"], "win_rate": report["win_rate"], "win_low": low, "win_high": high,
               "judge_failures": report["judge_failures"], "kl": report["kl_sampled"],
               "kl_stderr": report["kl_sampled_stderr"], "length_challenger": report["mean_length_policy"],
               "length_champion": report["mean_length_reference"], "pairs": {}}
    accelerator = Accelerator()
    autocast = eval_autocast(ecfg, accelerator)
    for path in pair_files:
        pcfg = EvalConfig(**{**ecfg.__dict__, "pairs": path})

        def accuracy(policy: str, reference: str) -> float:
            return pair_metrics(pcfg, models[policy], models[reference], tokenizer, autocast,
                                accelerator)["reward_accuracy"]

        acc = {"challenger": accuracy("new", "base"), "champion": accuracy("old", "base"),
               "challenger_vs_champion": accuracy("new", "old")}
        figures["pairs"][path] = acc
        log(f"[compare] held-out pairs {path}: accuracy {acc['champion']:.3f} (old) -> {acc['challenger']:.3f} (new)")
    return figures
