"""``online_report.json`` (one entry per finished round) and ``reward_vs_kl.png`` beside it."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.store.atomic import write_text_atomic

REPORT = "online_report.json"
PLOT = "reward_vs_kl.png"


def read_rounds(out: Path) -> list[dict]:
    path = out / REPORT
    return json.loads(path.read_text())["rounds"] if path.is_file() else []


def write_rounds(out: Path, rounds: list[dict], settings: dict) -> None:
    """The report with its rounds in order, then the plot redrawn from it."""
    rounds = sorted(rounds, key=lambda r: r["round"])
    write_text_atomic(out / REPORT, json.dumps({"settings": settings, "rounds": rounds}, indent=2))
    plot_reward_vs_kl(rounds, out / PLOT)


def round_figures(entry: dict) -> dict[str, float]:
    """The numbers of a round's report entry, as the trackers get them at step = the round: its
    counts and evaluation, the win rate's interval as ``win_rate_ci95/low`` and ``/high``."""
    figures: dict[str, float] = {}
    for key, value in entry.items():
        if isinstance(value, bool) or key == "round":
            continue
        if isinstance(value, (int, float)):
            figures[key] = value
        elif key == "win_rate_ci95":
            figures["win_rate_ci95/low"], figures["win_rate_ci95/high"] = value
    return figures


def reward_of(entry: dict) -> tuple[float, str]:
    """The y value of a round: the judge's mean score of the policy's answers when the judge scores
    answers, otherwise its win rate over the initial model."""
    if "mean_score_policy" in entry:
        return entry["mean_score_policy"], "mean judge score of the policy's answers"
    return entry["win_rate"], "judge win rate over the initial model"


def plot_reward_vs_kl(rounds: list[dict], path: Path) -> None:
    """Reward against sampled KL(π‖π_init), one point per round; round 0 is the initial model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rounds:
        return
    label = reward_of(rounds[0])[1]
    start = rounds[0].get("mean_score_reference", 0.5) if "mean_score_policy" in rounds[0] else 0.5
    xs = [0.0] + [r["kl_sampled"] for r in rounds]
    ys = [start] + [reward_of(r)[0] for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    ax.plot(xs, ys, marker="o")
    for i, (x, y) in enumerate(zip(xs, ys)):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("sampled KL(π ‖ π_initial), nats")
    ax.set_ylabel(label, fontsize=8)
    ax.set_title("online rounds (0 = initial model)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
