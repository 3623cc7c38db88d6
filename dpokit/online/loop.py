"""``dpokit online``: rounds of sample → judge → pair → train → evaluate, resumable.

Files under the run folder ``OUT`` (``--output``):

- ``online_config.yaml``: the settings; a rerun with other settings (beyond ``rounds``) is refused.
- ``judge_cache.json``: every judgement made, keyed by a hash of (judge identity, prompt, answers).
- ``round-N/candidates.jsonl``, ``pairs.jsonl``, ``sampling.json``: the answers sampled from the
  round's starting policy with their scores (and RSO acceptance), the pairs (or ranked lists)
  trained on, and the counts (written last, so it marks a finished sampling step).
- ``round-N/``: the round's training run (``final/``, ``metrics.jsonl``, checkpoints) and ``eval/``.
- ``online_report.json`` and ``reward_vs_kl.png``: one entry per finished round.

A rerun of the same command skips finished rounds (a report entry and a verified ``final/``), reuses
a round's pairs when they were sampled from the same policy, and continues an interrupted training
run from its newest checkpoint (``train.resume``).
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from dpokit.config.flags import RENAMED_FIELDS
from dpokit.errors import UserError
from dpokit.eval.evaluate import prompt_text, read_prompts
from dpokit.online.config import OnlineConfig
from dpokit.online.judging import RunJudges, candidate_scores, release
from dpokit.online.pairs import Candidates, form_pairs
from dpokit.online.report import read_rounds, round_figures, write_rounds
from dpokit.online.rso import rejection_sample
from dpokit.store.atomic import folder_digest, verify, write_jsonl, write_text_atomic
from dpokit.train import trackers
from dpokit.train.checkpoint import checkpoints

IGNORED_ON_RERUN = {"online.rounds", "train.progress", "train.report_to", "train.run_name", "train.trackers_dir"}


@dataclass
class OnlineResult:
    output: Path
    final: Path
    rounds: list[dict]


def online(cfg: OnlineConfig, log=print) -> OnlineResult:
    """Run (or continue) ``cfg.online.rounds`` rounds; the report lists every finished round."""
    from dpokit.store.versions import pin_version

    out = Path(cfg.train.output)
    # every round and its evaluation must see the same initial model, whatever is promoted meanwhile
    cfg.model.path, cfg.model.ref_path = pin_version(cfg.model.path), pin_version(cfg.model.ref_path)
    settings = _check_settings(out, cfg)
    prompts = read_prompts(cfg.online.prompts, 0)
    if not prompts:
        raise UserError("no prompts", where=cfg.online.prompts)
    judge = RunJudges(cfg.online, cfg.model.path, out / "judge_cache.json", cfg.model.trust_remote_code,
                      cfg.model.allow_pickle, cfg.train.dtype)
    rounds = _finished_rounds(out, read_rounds(out), log)
    reporter = trackers.reporter(cfg.train, settings)  # each round's figures at step = the round
    try:
        for entry in rounds:  # a rerun's tracker run starts with the rounds finished before
            trackers.log(reporter, round_figures(entry), entry["round"])
        for r in range(len(rounds) + 1, cfg.online.rounds + 1):
            log(f"[online] round {r}/{cfg.online.rounds}")
            rounds.append(run_round(cfg, r, prompts, judge, log))
            write_rounds(out, rounds, settings)
            trackers.log(reporter, round_figures(rounds[-1]), r)
    finally:
        trackers.finish(reporter)
    if not rounds:
        raise UserError("no round finished", where=str(out))
    return OnlineResult(out, Path(rounds[-1]["model"]), rounds)


def _check_settings(out: Path, cfg: OnlineConfig) -> dict:
    """Save the settings, or compare them with those of the run already in ``out``."""
    current = json.loads(json.dumps(cfg.to_dict()))
    path = out / "online_config.yaml"
    if path.is_file():
        # a setting added since the run was saved counts as its default there
        # a setting renamed since then is compared under its new name
        old = _flat(yaml.safe_load(path.read_text(encoding="utf-8")))
        saved = {**_flat(json.loads(json.dumps(OnlineConfig().to_dict()))),
                 **{RENAMED_FIELDS.get(k, k): v for k, v in old.items()}}
        now = _flat(current)
        diff = sorted(k for k in now.keys() | saved.keys() if k not in IGNORED_ON_RERUN and now.get(k) != saved.get(k))
        if diff:
            raise UserError(f"holds an online run with other settings ({', '.join(diff)}); rerun with the same "
                            "settings to continue it, or choose a new --output", where=str(out))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(current, sort_keys=False))
    return current


def _flat(d: dict, prefix: str = "") -> dict:
    items: dict = {}
    for k, v in d.items():
        items.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return items


def _finished_rounds(out: Path, entries: list[dict], log) -> list[dict]:
    """The longest run of rounds 1, 2, ... that each have a report entry and a verified final model."""
    by_round = {e["round"]: e for e in entries}
    done: list[dict] = []
    while (entry := by_round.get(len(done) + 1)) is not None:
        final = out / f"round-{entry['round']}" / "final"
        reason = verify(final) if final.is_dir() else "it is missing"
        if reason is not None:
            log(f"[online] round {entry['round']} is redone: {final}: {reason}")
            break
        done.append(entry)
    if done:
        log(f"[online] rounds 1–{len(done)} are finished")
    return done


def round_models(cfg: OnlineConfig, r: int) -> tuple[str, str | None, str]:
    """(policy to start from, reference for training or None = the starting policy, reference shown)."""
    out = Path(cfg.train.output)
    initial_ref = cfg.model.ref_path or cfg.model.path
    if r == 1:
        return cfg.model.path, cfg.model.ref_path, initial_ref
    policy = str(out / f"round-{r - 1}" / "final")
    if cfg.online.ref_update == "round":
        return policy, None, policy
    return policy, initial_ref, initial_ref


def model_id(path: str) -> str:
    """What identifies a model for reuse checks: its manifest digest, else its resolved path."""
    from dpokit.policies.lm.paths import concrete_path

    p = Path(concrete_path(path))
    return (folder_digest(p) if p.is_dir() else None) or str(p.resolve() if p.exists() else path)


def run_round(cfg: OnlineConfig, r: int, prompts: list, judge: RunJudges, log) -> dict:
    from dpokit.train import train_within

    rdir = Path(cfg.train.output) / f"round-{r}"
    policy, ref, ref_shown = round_models(cfg, r)
    # "initial" keeps the rounds but samples off-policy: a control that separates what on-policy
    # samples bring from what training in rounds brings.
    sampler = cfg.model.path if cfg.online.sample_from == "initial" else policy
    stats = _reuse_sampling(rdir, sampler)
    if stats is None:
        _clear_round(rdir)
        stats = sample_and_pair(cfg, r, sampler, prompts, judge, rdir, log)
    extra = "".join(f", {stats[k]} {what}" for k, what in (("judge_failures", "failed judgements"),
                                                           ("rso_rejected", "rejected by RSO"),
                                                           ("list_ties", "ties in lists")) if stats.get(k))
    log(f"[online] round {r}: {stats['pairs']} {'lists' if cfg.online.pairing == 'list' else 'pairs'}, "
        f"{stats['discarded']} of {stats['candidates']} candidates discarded{extra}")
    if stats["pairs"] == 0:
        raise UserError(f"round {r}: no two answers to a prompt differ by more than online.min_margin "
                        f"({cfg.online.min_margin}) (lists: or too few distinct answers); lower it, or sample "
                        "more or more varied answers (--samples-per-prompt, --temperature)",
                        where=str(rdir / "pairs.jsonl"))
    run_cfg = cfg.round_config(r, policy, ref, str(rdir / "pairs.jsonl"), str(rdir))
    final = rdir / "final"
    result = train_within(run_cfg, f"round {r}'s training", log)
    if result is None:
        log(f"[online] round {r}: training had finished; evaluating {final}")
    steps = result.steps if result else None
    report = evaluate_round(cfg, final, rdir, judge)
    entry = {"round": r, "model": str(final), "start_model": policy, "reference": ref_shown,
             "train_steps": steps, **{k: stats.get(k, 0) for k in SAMPLING_KEYS},  # 0: counted before the key existed
             **_eval_fields(report)}
    if cfg.train.registry:
        from dpokit.store.versions import Registry, attach_eval

        entry["version"] = attach_eval(Registry(cfg.train.registry), report, str(final), cfg.model.path)
    return entry


SAMPLING_KEYS = ("prompts", "candidates", "pairs", "discarded", "empty", "prompts_without_pair",
                 "mean_candidate_length", "mean_candidate_score", "judge_failures", "rso_rejected", "list_ties")
EVAL_KEYS = ("win_rate", "win_rate_ci95", "wins", "ties", "losses", "kl_sampled", "kl_sampled_stderr",
             "mean_length_policy", "mean_length_reference", "mean_score_policy", "mean_score_reference")


def _eval_fields(report: dict) -> dict:
    fields = {k: report[k] for k in EVAL_KEYS if report.get(k) is not None}
    fields["eval_prompts"] = report["prompts"]
    fields["eval_judge_failures"] = report["judge_failures"]  # prompts left out of the win rate
    fields["mean_length"] = report["mean_length_policy"]
    return fields


def _reuse_sampling(rdir: Path, policy: str) -> dict | None:
    """The round's sampling counts if its pairs were made from this same policy, else None."""
    path = rdir / "sampling.json"
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    return stats if stats.get("policy_id") == model_id(policy) else None


def _clear_round(rdir: Path) -> None:
    """Remove what a round trained from other samples left behind (stale checkpoints and model)."""
    for _, ckpt in checkpoints(rdir):
        shutil.rmtree(ckpt)
    if (rdir / "final").is_dir():
        shutil.rmtree(rdir / "final")


def sample_and_pair(cfg: OnlineConfig, r: int, policy: str, prompts: list, judges: RunJudges,
                    rdir: Path, log) -> dict:
    """Sample K answers per prompt from ``policy``, score them, keep some (RSO), write candidates,
    pairs (or lists) and counts."""
    from dpokit.online.sampling import sample_answers

    o = cfg.online
    chosen = round_prompts(prompts, r, o.prompts_per_round)
    answers = sample_answers(cfg, policy, chosen, seed=cfg.train.seed + r, log=log)
    judge = judges.for_round(policy)
    judge.cache.hits = judge.cache.misses = 0
    if hasattr(judge.judge, "reset_stats"):
        judge.judge.reset_stats()
    try:
        items = [Candidates(p, texts, candidate_scores(judge, prompt_text(p), texts))
                 for (p, _), (texts, _) in zip(chosen, answers)]
    finally:  # a stop while judging keeps the judgements made, for the rerun
        judge.cache.save()
    release(judge)  # the judge's weights are not needed while training
    rso = rso_select(items, o.rso_accept, o.rso_beta, cfg.train.seed + r) if o.sampling == "rso" else None
    list_size = o.list_size or o.pool_size()
    items = within_pair_budget(items, o.pairing, o.min_margin, list_size, o.max_pairs)
    answers = answers[:len(items)]
    records, counts = form_pairs(items, o.pairing, o.min_margin, list_size)
    write_jsonl(rdir / "candidates.jsonl", [{"prompt": it.prompt, "answers": it.answers, "scores": it.scores,
                                              **({"accepted": it.selected} if rso else {}), "pairs": n}
                                             for it, n in zip(items, counts.per_prompt)])
    write_jsonl(rdir / "pairs.jsonl", records)
    lengths = [n for _, token_counts in answers for n in token_counts]
    scores = [s for it in items for s in it.scores if s is not None]
    stats = {"policy": policy, "policy_id": model_id(policy), "prompts": len(items), "prompts_sampled": len(chosen),
             "candidates": counts.candidates, "pairs": counts.pairs, "discarded": counts.discarded,
             "empty": counts.empty, "prompts_without_pair": counts.prompts_without_pair,
             "mean_candidate_length": statistics.fmean(lengths),
             "mean_candidate_score": statistics.fmean(scores) if scores else None,
             "judge_failures": counts.judge_failures, "list_ties": counts.list_ties,
             **(rso or {"rso_rejected": 0}),
             "judge": {"identity": judge.identity, "cache_hits": judge.cache.hits,
                       "cache_misses": judge.cache.misses, "failed_judgements": judge.failed,
                       **getattr(judge.judge, "stats", {})}}
    write_text_atomic(rdir / "sampling.json", json.dumps(stats, indent=2))
    return stats


def rso_select(items: list[Candidates], accept: int, beta: float, seed: int) -> dict:
    """Mark each prompt's answers accepted by rejection sampling (``Candidates.selected``); the counts."""
    import random

    rejected = draws = 0
    for n, item in enumerate(items):
        usable = item.usable()  # empty answers and failed judgements are never proposed
        result = rejection_sample([item.scores[i] for i in usable], accept, beta, random.Random(seed * 1_000_003 + n))
        item.selected = sorted(usable[i] for i in result.accepted)
        rejected += len(usable) - len(result.accepted)
        draws += result.draws
    return {"rso_rejected": rejected, "rso_draws": draws}


def within_pair_budget(items: list[Candidates], pairing: str, margin: float, list_size: int,
                       max_pairs: int) -> list[Candidates]:
    """The shortest run of prompts, in order, whose pairs (or lists) reach ``max_pairs`` (all of
    them when 0 or when they give fewer); the answers of the prompts left out are neither
    written nor paired."""
    if max_pairs <= 0:
        return items
    total = 0
    for i, n in enumerate(form_pairs(items, pairing, margin, list_size)[1].per_prompt):
        total += n
        if total >= max_pairs:
            return items[:i + 1]
    return items


def round_prompts(prompts: list, r: int, per_round: int) -> list:
    """Round r's prompts: all of them, or the next ``per_round`` in turn (wrapping around)."""
    if per_round <= 0:
        return prompts
    start = (r - 1) * per_round
    return [prompts[(start + i) % len(prompts)] for i in range(per_round)]


def evaluate_round(cfg: OnlineConfig, final: Path, rdir: Path, judges: RunJudges) -> dict:
    """Win rate and sampled KL of the round's policy against the initial model (temperature 1, top-p 1)."""
    from dpokit.config import EvalConfig
    from dpokit.eval import evaluate_models

    o = cfg.online
    ecfg = EvalConfig(model=str(final), ref_model=cfg.model.ref_path or cfg.model.path,
                      prompts=o.eval_prompts or o.prompts, judge=o.judge, max_new_tokens=o.max_new_tokens,
                      num_prompts=o.eval_num_prompts, batch_size=o.generation_batch_size,
                      max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length,
                      seed=cfg.train.seed, dtype=cfg.train.dtype, output=str(rdir / "eval"),
                      trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    judge = judges.for_eval()
    report = evaluate_models(ecfg.validate(), judge=judge)
    judge.cache.save()
    release(judge)
    return report
