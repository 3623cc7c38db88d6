"""Evidence: the Bernoulli Thompson sampling (BTS) policy's click rate estimated off-policy from
the uniform Random policy's log of the Open Bandit Dataset ("Men" campaign, small sample), against
the click rate observed in BTS's own log.

OBD ships the serving policy's propensity for the logged item only, so the BTS policy's action
distribution is taken as its empirical frequencies per position in its own log (BTS ignores the
context; its posterior moves over the weeks, and the frequencies average over that period).

    PYTHONPATH=. python examples/open_bandit_ope.py [DATA_DIR]   (default: ../shared/data)
"""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

from dpokit.rank.logs import off_policy_data
from dpokit.rank.obd import EmpiricalPolicy, read_obd, read_obd_items
from dpokit.rank.ope import estimate


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(folder: Path) -> None:
    start = time.perf_counter()
    items = read_obd_items(folder / "obd-random-men-items.csv")
    ids = [it["id"] for it in items]
    random_log = read_obd(folder / "obd-random-men.csv.gz", ids)
    bts_log = read_obd(folder / "obd-bts-men.csv.gz", ids)
    target = EmpiricalPolicy(bts_log, ids, positions=3)
    data = off_policy_data(random_log, target, ids)
    estimates = estimate(data, bootstrap=2000, seed=0)
    clicks = [r.click for r in bts_log]
    rate = sum(clicks) / len(clicks)
    se = math.sqrt(rate * (1 - rate) / len(clicks))
    random_rate = sum(r.click for r in random_log) / len(random_log)
    took = time.perf_counter() - start
    print(f"Open Bandit, Men campaign: {len(random_log)} Random records ({int(data.click.sum())} clicks), "
          f"{len(bts_log)} BTS records ({sum(clicks)} clicks), {len(ids)} items, 3 positions")
    print(f"target: BTS's empirical action frequencies per position; weights max {data.weights().max():.2f}, "
          f"mean {data.weights().mean():.3f}")
    for est in estimates:
        print("  " + est.line())
    print(f"  on-policy BTS click rate {rate:.5f}  95% CI [{rate - 1.96 * se:.5f}, {rate + 1.96 * se:.5f}]")
    print(f"  (the Random policy's own click rate: {random_rate:.5f})")
    print(f"{took:.1f} s on {cpu_name()}, Python {platform.python_version()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
