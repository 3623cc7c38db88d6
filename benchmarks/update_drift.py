"""The update loop on a drifting stream of daily feedback (a script, not a test; docs/updates.md).

Each day the current champion answers 96 prompts, the day's rule scores the answers (``more e``
on days 1-3, ``more a`` on days 4-6; ``!`` flips that day's labels on purpose), and ``dpokit
update`` trains a challenger on the best-vs-worst pairs, A/B-tests it with the day's rule as the
judge, and promotes or refuses it. Then a version trained on flipped labels is promoted by hand
and ``dpokit versions check`` must roll it back. Prints the timeline as a table and writes
``OUTPUT/timeline.json`` and ``OUTPUT/timeline.png``.

    python benchmarks/update_drift.py --output runs/drift                       # tiny random model
    python benchmarks/update_drift.py --model builtin:smollm2 --steps 16 --lr 1e-5 --output runs/drift-smollm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dpokit.precision import cpu_info
from dpokit.tasks.drift import stream


def table(result: dict) -> str:
    s = result["start"]
    lines = ["| day | preference | labels | challenger | decision | win rate [95% CI] | KL | current | "
             "score e | score a |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| 0 | | | | | | | {s['current']} | {s['score_e']:.2f} | {s['score_a']:.2f} |"]
    for d in result["days"]:
        lo, hi = d["win_ci95"]
        lines.append(f"| {d['day']} | {d['preference']} | {d['labels']} | {d['challenger']} | "
                     f"{'promoted' if d['promoted'] else 'refused'} | {d['win_rate']:.1%} [{lo:.1%}, {hi:.1%}] | "
                     f"{d['kl']:.2f} | {d['current']} | {d['score_e']:.2f} | {d['score_a']:.2f} |")
    r = result["rollback"]
    lines.append(f"\nbroken {r['broken']} promoted by hand over {r['was_current']}; check: {r['check']}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [0] + [d["day"] for d in result["days"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("score_e", "more e"), ("score_a", "more a")):
        ax.plot(days, [result["start"][key]] + [d[key] for d in result["days"]], marker="o", label=label)
    for d in result["days"]:
        if not d["promoted"]:
            ax.axvline(d["day"], color="grey", alpha=0.3, lw=6)
    shift = next((d["day"] for d in result["days"] if d["preference"] != result["days"][0]["preference"]), None)
    if shift:
        ax.axvline(shift - 0.5, color="black", ls="--", lw=1)
    ax.set_xlabel("day (grey: challenger refused; dashed: the preference drifts)")
    ax.set_ylabel("champion's mean score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="start model (default: a tiny random model)")
    ap.add_argument("--days", default="e,e,e!,a,a,a")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pairs", type=int, default=96, help="feedback pairs a day")
    ap.add_argument("--output", default="runs/drift")
    a = ap.parse_args()
    out = Path(a.output)
    model = a.model
    if not model:
        from dpokit.policies.lm.tiny import write_tiny_model

        model = str(write_tiny_model(out / "tiny", seed=0))
    settings = {"train.max_steps": a.steps, "train.lr": a.lr, "train.batch_size": 8, "train.progress": False,
                "update.max_new_tokens": 12, "update.acc_drop": 0.2, "data.max_length": 48,
                "data.max_prompt_length": 16}
    start = time.perf_counter()
    result = stream(out, model, a.days.split(","), settings, pairs_per_day=a.pairs, log=lambda *_: None)
    result["seconds"] = time.perf_counter() - start
    result["machine"] = cpu_info()
    (out / "timeline.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "timeline.png")
    print(table(result))
    print(f"\n{result['seconds']:.0f} s on {result['machine']['cpu']}; {out / 'timeline.png'}")


if __name__ == "__main__":
    main()
