"""What ``dpokit rank simulate``, ``records`` and ``eval`` do, callable from Python: the CLI only
builds the config and calls these."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dpokit.config.rank import RankEvalConfig, RankRecordsConfig, SimulateConfig
from dpokit.data.report import DataReport
from dpokit.errors import UserError
from dpokit.rank.logs import off_policy_data, read_log, read_item_ids, training_records, write_jsonl
from dpokit.rank.ope import Estimate, estimate
from dpokit.rank.simulate import TRUTH, SlatePolicy, ranker_scorer, simulate, world_from_sidecar


def run_simulate(cfg: SimulateConfig) -> int:
    truth = simulate(cfg)
    out, logger = Path(cfg.out), truth["logger"]
    print(f"wrote {truth['records']} records ({cfg.impressions} slates of {cfg.slate}) to {out / 'log.jsonl'}, "
          f"{cfg.items} items to {out / 'items.jsonl'}, the simulator to {out / TRUTH}")
    print(f"logger ({cfg.logger}, {cfg.click_model} clicks): true click rate {logger['click_rate']:.5f}, "
          f"NDCG@{cfg.slate} {logger[f'ndcg@{cfg.slate}']:.4f}, HR@{cfg.slate} {logger[f'hr@{cfg.slate}']:.4f}; "
          f"observed in the log {truth['observed_click_rate']:.5f}")
    return 0


def run_records(cfg: RankRecordsConfig) -> int:
    report = DataReport(cfg.log)
    ids = read_item_ids(cfg.items) if cfg.items else None
    records = read_log(cfg.log, ids, on_error=cfg.on_error, report=report)
    rows, counts = training_records(records, cfg.mode, cfg.negatives, cfg.ips, cfg.clip)
    if not rows:
        raise UserError(f"no training records: {counts['clicks']} clicks, none with an unclicked shown item "
                        f"to stand against (mode {cfg.mode})", where=cfg.log)
    write_jsonl(cfg.out, rows)
    skipped = f", {report.total('skipped')} skipped" if report.counts else ""
    print(f"{len(records)} logged records{skipped}, {counts['impressions']} impressions, {counts['clicks']} clicks "
          f"({counts['without_negatives']} without an unclicked item to pair with) -> {len(rows)} {cfg.mode} "
          f"records in {cfg.out}")
    for (_, reason), n in sorted(report.counts.items()):
        print(f"  skipped {n}: {reason}")
    return 0


def evaluate_ranker(cfg: RankEvalConfig) -> dict:
    """The off-policy estimates of the ranker's slate policy on the log, and the simulator's true
    values when the log has a sidecar (``cfg.truth``, or ``simulator.json`` beside the log)."""
    from dpokit.policies.ranker import load_ranker

    sidecar = Path(cfg.truth) if cfg.truth else Path(cfg.log).parent / TRUTH
    if cfg.truth and not sidecar.is_file():
        raise UserError("file not found", where=str(sidecar), field="truth")
    module = load_ranker(cfg.ranker)
    ids = [str(item["id"]) for item in module.items]
    numeric = module.settings["context_numeric"]
    report = DataReport(cfg.log)
    records = read_log(cfg.log, ids, numeric + module.settings["context_categorical"], cfg.on_error, report, numeric)
    policy = SlatePolicy(ranker_scorer(cfg.ranker, ids), cfg.target, cfg.temperature)
    data = off_policy_data(records, policy, ids)
    estimates = estimate(data, cfg.clip, cfg.level, cfg.bootstrap, cfg.seed)
    out = {"ranker": cfg.ranker, "log": cfg.log, "target": cfg.target, "records": len(records),
           "skipped": report.total("skipped"), "skipped_by_reason": {r: n for (_, r), n in report.counts.items()},
           "observed_click_rate": float(data.click.mean()), "estimates": [asdict(e) for e in estimates]}
    if sidecar.is_file():
        world = world_from_sidecar(sidecar)
        target = SlatePolicy(ranker_scorer(cfg.ranker, world.item_ids), cfg.target, cfg.temperature)
        out["true"], out["logger_true"] = world.true_values(target), world.true_values(world.logger())
    return out


def format_eval(result: dict) -> str:
    skipped = f", {result['skipped']} skipped" if result["skipped"] else ""
    lines = [f"{result['ranker']} ({result['target']} slates) on {result['log']}: {result['records']} records"
             f"{skipped}; the logger's observed click rate {result['observed_click_rate']:.5f}"]
    lines += [f"  {reason}: {n}" for reason, n in result["skipped_by_reason"].items()]
    lines += ["  " + Estimate(**e).line() for e in result["estimates"]]
    if "true" in result:
        t, k = result["true"], len(result["true"]["click_rate_by_position"])
        lines.append(f"  true   {t['click_rate']:.5f}  (simulator; NDCG@{k} {t[f'ndcg@{k}']:.4f}, HR@{k} "
                     f"{t[f'hr@{k}']:.4f}; the logger's true click rate {result['logger_true']['click_rate']:.5f})")
    return "\n".join(lines)


def run_eval(cfg: RankEvalConfig) -> int:
    result = evaluate_ranker(cfg)
    print(format_eval(result))
    if cfg.output:
        path = Path(cfg.output)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0
