"""The figure sections: training and evaluation curves of every run overlaid, and reward against KL
(online rounds; evaluations of runs, of registry versions; held-out reward accuracy of runs)."""

from __future__ import annotations

from dpokit.report.html import esc, figure
from dpokit.report.plots import curve, finite, reward_vs_kl, slug
from dpokit.report.runs import Inputs, TrainingRun

FIRST_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
              "logps/rejected", "kl/approx", "logps/completion")
"""The metrics a reader looks at first, in this order; the others follow by name."""
NOT_CURVES = {"step", "epoch"}
GREY = 8
"""The palette's grey: points of evaluations, which are no single run's."""


def ordered_keys(runs: list[TrainingRun], eval_keys: bool) -> list[str]:
    """Every numeric metric any run logged (``eval/...`` ones, or the others)."""
    found: dict[str, None] = {}
    for run in runs:
        for record in run.metrics:
            if "event" in record:
                continue
            for k, v in record.items():
                if k not in NOT_CURVES and k.startswith("eval/") == eval_keys and finite(v):
                    found[k] = None
    prefix = "eval/" if eval_keys else ""
    first = [prefix + k for k in FIRST_KEYS if prefix + k in found]
    return first + sorted(k for k in found if k not in first)


def series(run: TrainingRun, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in run.metrics
              if "event" not in r and finite(r.get(key)) and finite(r.get("step"))]
    return [s for s, _ in points], [v for _, v in points]


def curves_section(runs: list[TrainingRun], eval_keys: bool) -> str:
    keys = ordered_keys(runs, eval_keys)
    if not keys:
        return ""
    figures = []
    for key in keys:
        lines = [(run.name, i, *series(run, key)) for i, run in enumerate(runs)]
        lines = [line for line in lines if line[2]]
        figures.append(figure(curve(key, lines, f"curve-{slug(key)}-{eval_keys}")))
    first = len([k for k in keys if k.removeprefix("eval/") in FIRST_KEYS]) or len(keys)
    more = (f'<details><summary>{len(keys) - first} more metrics</summary><div class="grid">{"".join(figures[first:])}'
            "</div></details>" if len(keys) > first else "")
    title, what = (("Evaluation during training", "the metrics over the whole --eval-data file at each --eval-steps")
                   if eval_keys else ("Training curves", "each logged optimizer step (metrics.jsonl)"))
    return (f'<section id="{"eval-curves" if eval_keys else "curves"}"><h2>{title}</h2>'
            f'<p class="muted">{esc(what)}; one line per run, coloured as in the list of runs.</p>'
            f'<div class="grid">{"".join(figures[:first])}</div>{more}</section>')


# -- reward against KL ------------------------------------------------------------------------------

def online_paths(inputs: Inputs) -> tuple[list, str]:
    """One path per online run: round 0 (the initial model) and each finished round."""
    paths, label = [], ""
    if not inputs.online:
        return paths, label
    from dpokit.online.report import reward_of  # the y value the online PNG plots (imports the online loop)

    for i, run in enumerate(inputs.online):
        rounds = [r for r in run.rounds if finite(r.get("kl_sampled"))]
        if not rounds:
            continue
        label = reward_of(rounds[0])[1]
        start = rounds[0].get("mean_score_reference", 0.5) if "mean_score_policy" in rounds[0] else 0.5
        points = [("0", 0.0, start)] + [(str(r["round"]), r["kl_sampled"], reward_of(r)[0]) for r in rounds]
        paths.append((run.name, len(inputs.runs) + i, points))
    return paths, label


def _report_points(name: str, report: dict) -> list[tuple[str, float, float]]:
    """(label, sampled KL, win rate) of an evaluation report; a comparison of stages (quickstart)
    holds one such report per pair of models."""
    if finite(report.get("kl_sampled")) and finite(report.get("win_rate")):
        return [(name, report["kl_sampled"], report["win_rate"])]
    return [(f"{name}: {k}", v["kl_sampled"], v["win_rate"]) for k, v in report.items()
            if isinstance(v, dict) and finite(v.get("kl_sampled")) and finite(v.get("win_rate"))]


def evaluation_points(inputs: Inputs) -> list[tuple[str, float, float]]:
    points = []
    for run in inputs.runs:
        tag = f" ({run.version['id']})" if run.version else ""
        for ev in run.evaluations:
            points += _report_points(ev.name + tag, ev.report)
    for ev in inputs.evaluations:
        points += _report_points(ev.name, ev.report)
    shown = {str(run.folder.resolve()) for run in inputs.runs if run.version}
    for record in inputs.versions:  # a version of a run on the page is already there, named by its id
        if record.get("run") not in shown:
            points += _report_points(record["id"], record["eval"]["report"])
    return points


def accuracy_paths(runs: list[TrainingRun]) -> list:
    """Each run's last held-out reward accuracy against its held-out approximate KL, in the run's colour."""
    paths = []
    for i, run in enumerate(runs):
        last = [r for r in run.metrics if finite(r.get("eval/rewards/accuracies")) and finite(r.get("eval/kl/approx"))]
        if last:
            paths.append((run.name, i, [(run.name, last[-1]["eval/kl/approx"], last[-1]["eval/rewards/accuracies"])]))
    return paths


def reward_kl_section(inputs: Inputs) -> str:
    figures = []
    paths, label = online_paths(inputs)
    if paths:
        figures.append(figure(reward_vs_kl(paths, "sampled KL(π ‖ π_initial), nats", label,
                                           "online rounds (0 = initial model)", "rk-online"),
                              "online_report.json: one point per finished round"))
    points = evaluation_points(inputs)
    if points:
        figures.append(figure(reward_vs_kl([("evaluations", GREY, points)], "sampled KL(π ‖ π_ref), nats",
                                           "judge win rate over the reference", "evaluations", "rk-evals",
                                           connect=False),
                              "eval_report.json of each run, evaluation and registry version; each win rate "
                              "is over that evaluation's own reference"))
    paths = accuracy_paths(inputs.runs)
    if paths:
        figures.append(figure(reward_vs_kl(paths, "eval/kl/approx (per token, held-out pairs)",
                                           "eval/rewards/accuracies", "held-out reward accuracy", "rk-acc",
                                           connect=False),
                              "the last evaluation during training of each run"))
    if not figures:
        return ""
    return f'<section id="reward-kl"><h2>Reward against KL</h2><div class="grid">{"".join(figures)}</div></section>'
