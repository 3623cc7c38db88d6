"""Daily updates of a ranker on the click simulator: one world, a new log every day, one day's
clicks flipped on purpose.

Day 0 trains the first ranker (DPO from a random start on day 0's log) and makes it current in a
registry. Each of days 1..N then runs ``dpokit rank update``: a challenger trained from the current
ranker on the day's log, with it as the reference, both estimated on a held-out log of the same
day, promoted only when the estimated gain's interval lies above 0 and the KL to the champion is
within the day's bound. On the bad day every click of the training log is flipped (clicked ↔ not
clicked): the challenger learns the users' dislikes and must be refused. The table gives each
day's decision, the challenger's estimate with its interval, the true click rate of the version
current after the day (exact, from the simulator) and the KL.

    python examples/rank_daily.py --out runs/rank_daily
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from dpokit.cli import main
from dpokit.config.rank import SimulateConfig
from dpokit.policies.ranker import write_ranker
from dpokit.rank.simulate import SlatePolicy, World, ranker_scorer, simulate
from dpokit.store.versions import Registry

TRAIN = ["--loss", "sigmoid", "--beta", "1", "--optimizer", "adamw", "--scheduler", "constant",
         "--batch-size", "32", "--no-progress"]


def flip_clicks(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "click": 1 - r["click"]}) + "\n" for r in rows))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def day_logs(out: Path, world_cfg: dict, day: int, impressions: int) -> tuple[Path, Path]:
    """(the day's log, the day's held-out log): two logs of the same world, new seeds."""
    for name, seed in (("log", 10 + day), ("held", 1000 + day)):
        simulate(SimulateConfig(**world_cfg, out=str(out / f"day{day}" / name), impressions=impressions,
                                log_seed=seed).validate())
    return out / f"day{day}" / "log" / "log.jsonl", out / f"day{day}" / "held" / "log.jsonl"


def main_(args) -> None:
    out, start = Path(args.out), time.perf_counter()
    world_cfg = {"users": args.users, "items": args.items, "slate": 3, "seed": args.seed}
    world = World(SimulateConfig(**world_cfg).validate())
    registry = out / "registry"
    log0, _ = day_logs(out, world_cfg, 0, args.impressions)
    assert main(["rank", "records", "--log", str(log0), "--out", str(out / "day0" / "pairs.jsonl"), "--clip", "20"]) == 0
    r0 = write_ranker(out / "r0", world.item_table(), buckets=2048, dim=8, seed=0, **world.ranker_columns())
    assert main(["dpo", "--policy", "item_ranker", "--model", str(r0), "--data", str(out / "day0" / "pairs.jsonl"),
                 "--ref", "copy", "--lr", "0.05", "--max-steps", str(args.steps), "--output", str(out / "day0" / "run"),
                 "--registry", str(registry), *TRAIN]) == 0
    assert main(["versions", "promote", "v1", "--registry", str(registry)]) == 0

    def true_rate(folder: str) -> float:
        return world.true_values(SlatePolicy(ranker_scorer(folder, world.item_ids), "softmax"))["click_rate"]

    reg = Registry(registry)
    rows = [(0, "start (v1)", None, None, true_rate(reg.get("v1")["model"]), None)]
    for day in range(1, args.days + 1):
        log, held = day_logs(out, world_cfg, day, args.impressions)
        if day == args.bad_day:
            flip_clicks(log)
        assert main(["rank", "update", "--registry", str(registry), "--log", str(log), "--held-out", str(held),
                     "--lr", str(args.lr), "--max-steps", str(args.steps), "--max-kl", str(args.max_kl), *TRAIN]) == 0
        record = next(r for r in reversed(reg.records()) if r.get("update"))
        f, decision = record["update"]["figures"], record["update"]["decision"]
        verdict = ("promoted " if decision["promoted"] else "refused ") + record["id"]
        rows.append((day, verdict + (" (flipped clicks)" if day == args.bad_day else ""), f["challenger"], f["gain"],
                     true_rate(reg.get(reg.current())["model"]), f["kl"]))
        if day == args.bad_day:
            assert not decision["promoted"], decision
    print(f"\n| day | decision | challenger's SNIPS [95% CI], held-out log | gain over the champion [95% CI] | "
          f"true click rate of the current version | KL to champion (bound {args.max_kl:g}) |\n|---|---|---|---|---|---|")
    for day, verdict, est, gain, true, kl in rows:
        est_s = f"{est['value']:.4f} [{est['low']:.4f}, {est['high']:.4f}]" if est else ""
        gain_s = f"{gain['value']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]" if gain else ""
        print(f"| {day} | {verdict} | {est_s} | {gain_s} | {true:.4f} | {'' if kl is None else f'{kl:.4f}'} |")
    print(f"\nlogger's true click rate {world.true_values(world.logger())['click_rate']:.4f}; "
          f"{time.perf_counter() - start:.0f} s on {cpu_name()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rank_daily")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--bad-day", type=int, default=4)
    parser.add_argument("--impressions", type=int, default=4000, help="slates per day's log (and held-out log)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per day")
    parser.add_argument("--lr", type=float, default=0.02, help="the daily updates' learning rate")
    parser.add_argument("--max-kl", type=float, default=0.5, help="the per-day KL bound")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    main_(parser.parse_args())
