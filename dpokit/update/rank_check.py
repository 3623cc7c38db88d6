"""``dpokit rank check`` and ``watch``: the registry's current ranker re-estimated on a fixed
canary log against the version current before it, and rolled back when it has fallen behind.

The figures are a daily update's (``dpokit.rank.daily.daily_figures``: SNIPS or DR of both
rankers on the same records, the paired gain current − previous with its interval, the KL of the
current to the previous), and the bookkeeping is ``dpokit versions check``'s
(``dpokit.update.canary.check_current``: the lock, the ``checks`` entry, the rollback and its
logged reasons). The current version is rolled back when its model folder no longer verifies, or
when the gain's interval lies wholly below −``margin``: it clearly earns fewer clicks.
"""

from __future__ import annotations

import math
import time

from dpokit.config.rank import RankCheckConfig
from dpokit.errors import UserError
from dpokit.rank.daily import daily_figures
from dpokit.store.versions import Registry
from dpokit.update.canary import check_current, watch_checks
from dpokit.update.rank import champion_ranker

SIDES = ("previous", "current")


def fallen_behind(c: RankCheckConfig, figures: dict) -> list[str]:
    """Why the current ranker should be rolled back (none: it holds up)."""
    high = figures["gain"]["high"]
    if high < -c.margin:
        return [f"loses to the previous version: {figures['estimator']} gain interval high {high:+.5f} "
                f"< -margin {c.margin:g}"]
    return []


def rank_check(registry: Registry, c: RankCheckConfig, log=print) -> str:
    """One check of the current ranker; rolls it back when it has fallen behind. Returns what happened."""

    def assess(current: dict, previous: dict) -> tuple[dict, list[str]]:
        models = [champion_ranker(registry, r["id"], f"the {side} version") for side, r in
                  zip(SIDES, (previous, current))]
        figures = daily_figures(*models, c, log, sides=SIDES, stage="rank check")
        if not math.isfinite(figures["gain"]["high"]):  # no evidence either way: act on none
            raise UserError(f"no interval of the click-rate gain on {figures['records']} records; "
                            f"{current['id']} stays current", where=c.held_out, field="held_out")
        return figures, fallen_behind(c, figures)

    def summary(f: dict) -> str:
        g = f["gain"]
        return (f"{f['estimator']} click rate {f['current']['value']:.4f} against {f['previous']['value']:.4f}, "
                f"gain {g['value']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")

    return check_current(registry, assess, summary)


def rank_watch(registry: Registry, c: RankCheckConfig, log=print, sleep=time.sleep) -> None:
    """``rank_check`` every ``interval`` seconds, ``times`` times (0: until stopped)."""
    watch_checks(lambda: rank_check(registry, c, log), c.interval, c.times, log, sleep)
