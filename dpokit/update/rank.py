"""``dpokit rank update``: a ranker's daily update. A new day's log in, a challenger trained from
the registry's current ranker (the champion, also its reference: ``--ref copy``) on the records
made from the day's clicks, both estimated on a held-out log, promoted or refused by the rule of
``dpokit.rank.daily``, with the decision and its figures in the challenger's version record and in
the registry's events.

It is ``dpokit update``'s journal (``REGISTRY/updates/ID/journal.json``, train → evaluate → done,
ID a digest of the settings and the logs' contents), lock and bookkeeping, with a ranker's
training data, evaluation and rule: a rerun after a kill continues where it stopped, and a rerun
after the end reports the decision.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dpokit.config.rank import RankUpdateConfig
from dpokit.errors import UserError
from dpokit.rank.daily import ClickRule, daily_figures, decide_clicks
from dpokit.rank.logs import read_log, training_records, write_jsonl
from dpokit.store.versions import Registry, model_problem
from dpokit.update.run import advance, open_journal, settings_key, settle, train_registered, update_session


def rank_update(cfg: RankUpdateConfig, log=print) -> dict:
    """Run (or continue) the daily update ``cfg`` asks for; returns its finished journal."""
    with update_session(cfg.train.registry, cfg.daily.wait, lambda: rank_update_key(cfg)) as (registry, key, folder):
        return _run_day(cfg, registry, key, folder, log)


def _run_day(cfg: RankUpdateConfig, registry: Registry, key: str, folder: Path, log) -> dict:
    journal, state = open_journal(registry, key, folder, log)
    if state["step"] == "done":
        return state
    champion = champion_ranker(registry, state["champion"])
    if state["step"] == "train":
        state["data"], data = day_records(cfg, champion, folder, log)
        state["challenger"] = train_registered(lambda: run_config(cfg, champion, folder, data), registry,
                                               state, folder, {"reference": "champion", "kind": "ranker"}, log)
        advance(journal, state, "evaluate")
    if state["step"] == "evaluate":
        challenger = registry.get(state["challenger"])["model"]
        state["figures"] = daily_figures(champion, challenger, cfg.daily, log)
        advance(journal, state, "decide")
    conclude(cfg, registry, state)
    advance(journal, state, "done")
    return state


def rank_update_key(cfg: RankUpdateConfig) -> str:
    settings = cfg.to_dict()
    settings["train"].pop("registry")
    settings["daily"].pop("wait")
    d = cfg.daily
    return settings_key(settings, [d.log, d.held_out, *([d.truth] if d.truth else [])])


def champion_ranker(registry: Registry, vid: str, role: str = "the champion") -> str:
    """The model folder of version ``vid`` (``role``, for the message), which must be an
    item_ranker folder that verifies."""
    record = registry.get(vid)
    if problem := model_problem(record):
        raise UserError(f"{role} {vid}: {problem}", where=str(registry.root))
    if not (Path(record["model"]) / "ranker.json").is_file():
        raise UserError(f"{role} {vid} is not an item_ranker folder (no ranker.json in {record['model']}): "
                        "dpokit rank update and check take rankers; dpokit update and versions check, language "
                        "models", where=str(registry.root))
    return record["model"]


def day_records(cfg: RankUpdateConfig, champion: str, folder: Path, log) -> tuple[dict, str]:
    """(counts, the training file): the item_ranker records made from the day's clicks."""
    from dpokit.policies.ranker import load_ranker

    module = load_ranker(champion)
    numeric, d = module.settings["context_numeric"], cfg.daily
    logged = read_log(d.log, [str(i["id"]) for i in module.items], numeric + module.settings["context_categorical"],
                      numeric=numeric)
    rows, counts = training_records(logged, d.mode, d.negatives, d.ips, d.records_clip)
    if not rows:
        raise UserError(f"no training records: {counts['clicks']} clicks, none with an unclicked shown item "
                        f"to stand against (mode {d.mode})", where=d.log)
    out = write_jsonl(folder / "train.jsonl", rows)
    log(f"[rank update] {len(logged)} logged records of {d.log} -> {len(rows)} {d.mode} records")
    return {d.log: counts}, str(out)


def run_config(cfg: RankUpdateConfig, champion: str, folder: Path, data: str):
    """The challenger's training run: from the champion, which is also its reference, on ``data``."""
    from dpokit.config import RunConfig

    run = RunConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)})
    run = dataclasses.replace(
        run, model=dataclasses.replace(cfg.model, path=champion, ref_path=None, policy="item_ranker"),
        data=dataclasses.replace(cfg.data, train=data),
        train=dataclasses.replace(cfg.train, output=str(folder / "run"), ref="copy"))
    return run.validate()


def rule(cfg: RankUpdateConfig) -> ClickRule:
    return ClickRule(min_gain=cfg.daily.min_gain, max_kl=cfg.daily.max_kl)


def conclude(cfg: RankUpdateConfig, registry: Registry, state: dict) -> None:
    f = state["figures"]
    promoted, reasons = decide_clicks(rule(cfg), f)
    c, n, g = f["champion"], f["challenger"], f["gain"]
    details = (f"{f['estimator']} click rate {n['value']:.4f} [{n['low']:.4f}, {n['high']:.4f}] against "
               f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}], gain {g['value']:+.4f} [{g['low']:+.4f}, "
               f"{g['high']:+.4f}], KL {f['kl']:.4f}")
    settle(registry, state, promoted, reasons, details, dataclasses.asdict(rule(cfg)))


def run_rank_update(cfg: RankUpdateConfig) -> int:
    state = rank_update(cfg)
    print(state["decision"]["summary"])
    for reason in state["decision"]["reasons"]:
        print(f"  refused: {reason}")
    return 0
