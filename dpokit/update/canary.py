"""``dpokit versions check`` and ``watch``: the current version re-evaluated on a fixed canary set
against the version that was current before it (the last stable one), and rolled back when it
has fallen behind, with the reasons recorded.

The current version is rolled back when:
- its model folder no longer verifies;
- it clearly loses to the previous version on the canary prompts: the upper end of its win-rate
  interval is below 0.5 − ``win_margin``;
- its reward accuracy on a canary pair file is more than ``acc_drop`` below the previous version's.
Each check is appended to the version's record (``checks``). A rollback is logged in ``index.json``
with its reasons.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dpokit.config import EvalConfig
from dpokit.config.flags import config_flags
from dpokit.errors import UserError
from dpokit.store.versions import Registry, model_problem, rollback, utc_now


@dataclass
class CanaryConfig(EvalConfig):
    """A fixed canary set (``prompts``, ``judge``, optional ``pairs``: the evaluation's settings) and
    the thresholds past which the current version is rolled back. The two models compared are the
    registry's current and previous versions, so ``model`` and ``ref_model`` are not set."""

    win_margin: float = 0.0
    """Roll back when the win-rate interval against the previous version lies wholly below 0.5 − this."""
    acc_drop: float = 0.05
    """Roll back when a pair file's accuracy falls more than this below the previous version's."""
    interval: float = 3600.0
    """``watch``: seconds between checks."""
    times: int = 0
    """``watch``: stop after this many checks (0: keep watching)."""

    def validate(self) -> CanaryConfig:
        checks = [(self.win_margin < 0, "win_margin", "must be ≥ 0"), (self.acc_drop < 0, "acc_drop", "must be ≥ 0"),
                  (self.interval < 0, "interval", "must be ≥ 0"), (self.times < 0, "times", "must be ≥ 0")]
        for bad, key, msg in checks:
            if bad:
                raise UserError(msg, where="config", field=key)
        self.comparison("current", "previous")  # the evaluation's own checks
        return self

    def comparison(self, model: str, ref_model: str) -> EvalConfig:
        """The evaluation of ``model`` against ``ref_model`` on the canary set."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig)}
        return EvalConfig(**{**shared, "model": model, "ref_model": ref_model, "registry": ""}).validate()


CANARY_FLAG_SET = config_flags(CanaryConfig, skip=("model", "ref_model", "output", "registry", "version"))


def fallen_behind(c: CanaryConfig, figures: dict) -> list[str]:
    """Why the current version should be rolled back (none: it holds up)."""
    reasons = []
    if figures["win_high"] < 0.5 - c.win_margin:
        reasons.append(f"loses to the previous version: win-rate interval high {figures['win_high']:.3f} "
                       f"< 0.5 - margin {c.win_margin:g}")
    for name, acc in figures["pairs"].items():
        if acc["champion"] - acc["challenger"] > c.acc_drop:
            reasons.append(f"canary pair accuracy on {name} fell {acc['champion'] - acc['challenger']:.3f} "
                           f"(from {acc['champion']:.3f} to {acc['challenger']:.3f}) > tolerance {c.acc_drop:g}")
    return reasons


def check(registry: Registry, c: CanaryConfig, log=print) -> str:
    """One check of the current version; rolls it back when it has fallen behind. Returns what happened."""
    from dpokit.update.ab import compare
    from dpokit.update.run import lineage_base

    def assess(current: dict, previous: dict) -> tuple[dict, list[str]]:
        figures = compare(c.comparison(current["model"], previous["model"]), lineage_base(registry, previous["id"]),
                          [p for p in (c.pairs or "").split(",") if p], log)
        return figures, fallen_behind(c, figures)

    return check_current(registry, assess, lambda f: f"win rate {f['win_rate']:.1%} [{f['win_low']:.1%}, "
                                                     f"{f['win_high']:.1%}]")


def check_current(registry: Registry, assess: Callable[[dict, dict], tuple[dict, list[str]]],
                  summary: Callable[[dict], str]) -> str:
    """The check of any kind of model: the registry's current version against the previous one,
    under the update lock. ``assess(current, previous)`` (the version records) gives the figures and
    the reasons to roll back; a model folder that fails verification is one on its own, without
    figures. The check goes into the current version's record (``checks``), a rollback into
    ``index.json`` with its reasons. ``summary(figures)`` words a check that holds up."""
    from dpokit.update.lock import registry_lock

    with registry_lock(registry.require().root, wait=True):  # never beside an update's decision
        history = registry.history()
        if len(history) < 2:
            return f"nothing to check against: {history[-1] if history else 'no version'} is the only version current so far"
        current, previous = registry.get(history[-1]), registry.get(history[-2])
        problem = model_problem(current)
        figures = None
        if problem:
            reasons = [problem]
        else:
            figures, reasons = assess(current, previous)
        entry = {"time": utc_now(), "against": previous["id"], "figures": figures, "reasons": reasons,
                 "rolled_back": bool(reasons)}
        if not problem:
            current.setdefault("checks", []).append(entry)
            registry.update(current)
        if not reasons:
            return f"{current['id']} holds up against {previous['id']}: {summary(figures)}"
        done = rollback(registry, f"check: rollback {current['id']}", {"reasons": reasons})
        return f"{done}: " + "; ".join(reasons)


def watch(registry: Registry, c: CanaryConfig, log=print, sleep=time.sleep) -> None:
    """``check`` every ``interval`` seconds, ``times`` times (0: until stopped)."""
    watch_checks(lambda: check(registry, c, log), c.interval, c.times, log, sleep)


def watch_checks(check_once: Callable[[], str], interval: float, times: int, log=print, sleep=time.sleep) -> None:
    """``check_once`` every ``interval`` seconds, ``times`` times (0: until stopped), each outcome logged."""
    n = 0
    while True:
        log(f"[watch] {utc_now()} {check_once()}")
        n += 1
        if times and n >= times:
            return
        sleep(interval)
