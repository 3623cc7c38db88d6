"""The figures a ranker's daily update decides on (and ``dpokit rank check`` reads again), and its rule.

On a held-out log (records neither ranker trained on), for the champion and the challenger:

- each one's click rate by SNIPS or DR with its normal interval (``dpokit.rank.ope``);
- the gain V_challenger − V_champion with the interval of the difference. Both estimates read the
  same records, so they are paired: the difference of their per-record terms is the difference's
  term, and its spread is much smaller than the two intervals' widths suggest (their errors, from
  the same clicks, move together);
- the mean KL(π_challenger ‖ π_champion) of softmax(score / T) over the whole item table (the
  candidates a ranker chooses among), over the log's impressions (a context counts as often as it
  was served);
- with a simulator sidecar, each one's exact click rate and NDCG, recorded for the reader only.

The rule (``ClickRule``) promotes when the gain's interval lies above ``min_gain`` and the KL is
within the day's bound. A click rate is not a win rate, so ``dpokit.update.decision``'s
``win_low`` does not apply; the rule keeps its manner: every failed test is a reason, and a
figure that is missing or not finite refuses.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpokit.errors import UserError
from dpokit.rank.logs import off_policy_data, read_log
from dpokit.rank.ope import estimate_terms, normal_interval
from dpokit.rank.simulate import TRUTH, SlatePolicy, ranker_scorer, world_from_sidecar


@dataclass(frozen=True)
class ClickRule:
    min_gain: float = 0.0
    """The lower end of the gain's interval (challenger − champion click rate) must exceed this."""
    max_kl: float = 0.5
    """The mean KL of the challenger to the champion must be at most this (nats)."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def decide_clicks(rule: ClickRule, figures: dict) -> tuple[bool, list[str]]:
    """(promote, reasons) from ``figures``: ``gain`` ({value, low, high}) and ``kl``."""
    reasons = []
    low = (figures.get("gain") or {}).get("low")
    if not _finite(low):
        reasons.append("no interval of the click-rate gain")
    elif low <= rule.min_gain:
        reasons.append(f"{figures.get('estimator', '')} gain interval low {low:+.5f} <= min gain {rule.min_gain:g}")
    kl = figures.get("kl")
    if not _finite(kl):
        reasons.append("no KL to the champion")
    elif kl > rule.max_kl:
        reasons.append(f"KL to champion {kl:.4f} > the day's bound {rule.max_kl:g}")
    return not reasons, reasons


def _interval(est) -> dict:
    return {"value": est.value, "low": est.low, "high": est.high, "se": est.se}


def daily_figures(champion: str, challenger: str, settings, log=print,
                  sides: tuple[str, str] = ("champion", "challenger"), stage: str = "rank update") -> dict:
    """The figures of ``settings`` (a ``HeldOutSettings``) for two ranker folders with one item
    table, each ranker's under its name in ``sides`` (a check names them previous and current);
    the gain is the second's click rate less the first's, the KL the second's to the first."""
    from dpokit.policies.ranker import load_ranker

    module = load_ranker(champion)
    ids = [str(item["id"]) for item in module.items]
    numeric = module.settings["context_numeric"]
    records = read_log(settings.held_out, ids, numeric + module.settings["context_categorical"], numeric=numeric)
    method = settings.estimator.upper()
    out: dict = {"estimator": method, "held_out": settings.held_out, "records": len(records),
                 "target": settings.target, "temperature": settings.temperature}
    terms = {}
    pair = tuple(zip(sides, (champion, challenger)))
    for side, folder in pair:
        policy = SlatePolicy(ranker_scorer(folder, ids), settings.target, settings.temperature)
        value, terms[side] = estimate_terms(off_policy_data(records, policy, ids), settings.estimator,
                                            settings.eval_clip)
        out[side] = _interval(normal_interval(method, value, terms[side], settings.level))
    first, second = sides
    gain = out[second]["value"] - out[first]["value"]
    out["gain"] = _interval(normal_interval(method, gain, terms[second] - terms[first], settings.level))
    counts = Counter(json.dumps(r.context, sort_keys=True) for r in _first_of_each_impression(records))
    out["kl"] = mean_kl(champion, challenger, [json.loads(c) for c in counts], list(counts.values()),
                        settings.temperature)
    sidecar = Path(settings.truth) if settings.truth else Path(settings.held_out).parent / TRUTH
    if settings.truth and not sidecar.is_file():
        raise UserError("file not found", where=str(sidecar), field="daily.truth")
    if sidecar.is_file():
        world = world_from_sidecar(sidecar)
        out["true"] = {side: _true(world, folder, settings) for side, folder in pair}
    log(f"[{stage}] {method} on {len(records)} held-out records: {first} {out[first]['value']:.5f}, "
        f"{second} {out[second]['value']:.5f}, gain {gain:+.5f} [{out['gain']['low']:+.5f}, "
        f"{out['gain']['high']:+.5f}], KL {out['kl']:.4f}")
    return out


def _first_of_each_impression(records):
    seen = {}
    for r in records:
        seen.setdefault(r.impression, r)
    return seen.values()


def _true(world, folder: str, settings) -> dict:
    values = world.true_values(SlatePolicy(ranker_scorer(folder, world.item_ids), settings.target,
                                           settings.temperature))
    k = len(values["click_rate_by_position"])
    return {"click_rate": values["click_rate"], f"ndcg@{k}": values[f"ndcg@{k}"]}


def mean_kl(reference: str, policy: str, contexts: list[dict], counts: list[int], temperature: float) -> float:
    """Σ_c n_c KL(π_policy(·|c) ‖ π_reference(·|c)) / Σ_c n_c, each π the softmax of a ranker
    folder's scores / temperature over its item table (the two folders' tables in one order)."""
    from dpokit.policies.ranker import load_ranker

    ids = [str(item["id"]) for item in load_ranker(reference).items]
    logp = {}
    for name, folder in (("reference", reference), ("policy", policy)):
        s = ranker_scorer(folder, ids)(contexts) / temperature
        logp[name] = s - np.logaddexp.reduce(s, axis=1, keepdims=True)
    kl = (np.exp(logp["policy"]) * (logp["policy"] - logp["reference"])).sum(1)
    return float(np.average(kl, weights=counts))
