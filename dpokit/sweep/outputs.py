"""What a sweep writes when its trials are done: the table of trials (printed, and ``trials.csv``),
``best.yaml`` (the best trial's config, which ``dpokit dpo --config best.yaml`` runs), the
reward–KL plot with its frontier marked (``reward_kl.png``), and with ``--keep best`` only the
best trials' folders."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

import yaml

from dpokit.store.atomic import write_text_atomic
from dpokit.sweep import objectives as objs


def rows(study, s) -> list[dict]:
    """One row per trial: number, state, the searched values, each objective, KL, feasibility, seconds."""
    goals = objs.objectives(s.objectives)
    out = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name, **t.params}
        for i, g in enumerate(goals):  # a pruned trial's value is its last intermediate one: not the objective
            row[g.name] = t.values[i] if t.values and t.state.name == "COMPLETE" else None
        row["kl"] = t.user_attrs.get("kl")
        if s.max_kl is not None:
            row["feasible"] = None if row["kl"] is None else row["kl"] <= s.max_kl
        row["pruned_at"] = t.user_attrs.get("pruned_at")
        row["seconds"] = t.user_attrs.get("seconds")
        out.append(row)
    return out


def best_trials(study, s) -> list:
    """The best finished trial (single objective) or the Pareto front (several), among the trials
    within ``--max-kl`` when a bound is set; best first by the first objective."""
    goals = objs.objectives(s.objectives)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if s.max_kl is not None:
        done = [t for t in done if t.user_attrs.get("kl", math.inf) <= s.max_kl]
    signs = [1 if g.direction == "maximize" else -1 for g in goals]
    front = [t for t in done if not any(_dominates(u.values, t.values, signs) for u in done)]
    front.sort(key=lambda t: (-signs[0] * t.values[0], t.user_attrs.get("kl", math.inf), t.number))  # ties: less KL
    return front[:1] if len(goals) == 1 else front


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    """``a`` at least as good as ``b`` in every objective and better in one."""
    better = [sg * (x - y) for x, y, sg in zip(a, b, signs)]
    return all(d >= 0 for d in better) and any(d > 0 for d in better)


def format_table(table: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in table for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(values, widths)) for values in [columns, *cells])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_csv(path: Path, table: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in table for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(path, buf.getvalue())


def write_best(s, trial, path: Path) -> None:
    """The config the best trial ran, training into ``OUTPUT/best-run`` (its own folder is the trial's)."""
    from dpokit.config import load_config

    cfg = load_config(s.config, {**trial.params, "train.output": str(Path(s.output) / "best-run")})
    data = cfg.to_dict()
    data["train"]["adam_betas"] = list(data["train"]["adam_betas"])
    header = (f"# dpokit sweep {s.name}: trial {trial.number}, "
              + ", ".join(f"{k} = {v:.6g}" for k, v in zip(s.objectives, trial.values)) + "\n")
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))


def plot(path: Path, table: list[dict], reward: str, best: list[int], max_kl: float | None) -> bool:
    """Reward (the first objective) against sampled KL, one point per measured trial, the frontier
    (highest reward for its KL) joined, the best marked; False when no trial was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r["kl"], r[reward], r["trial"]) for r in table if r.get("kl") is not None and r.get(reward) is not None)
    if not pts:
        return False
    sign = -1 if objs.OBJECTIVES[reward].direction == "minimize" else 1
    frontier, top = [], -math.inf
    for kl, value, n in pts:
        if sign * value > top:
            frontier.append((kl, value))
            top = sign * value
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", label="trials")
    ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "-o", color="tab:orange", label="frontier")
    for kl, value, n in pts:
        ax.annotate(str(n), (kl, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if n in best:
            ax.scatter([kl], [value], s=160, facecolors="none", edgecolors="tab:red", label="best")
    if max_kl is not None:
        ax.axvline(max_kl, color="grey", linestyle="--", label=f"KL bound {max_kl:g}")
    ax.set_xlabel("sampled KL(π‖π_ref) (nats)")
    ax.set_ylabel(reward)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True


def keep_best(output: Path, table: list[dict], best: list[int], log) -> list[int]:
    """Delete the folders of finished trials that are not best: each is first renamed to a hidden
    name (one atomic step, so no half-deleted trial folder is left under its own name), then removed.
    Trials still running (another process) are left alone. The numbers removed."""
    removed = []
    for row in table:
        folder = output / f"trial-{row['trial']}"
        if row["trial"] in best or row["state"] == "RUNNING" or not folder.is_dir():
            continue
        doomed = output / f".deleting-trial-{row['trial']}"
        folder.rename(doomed)
        shutil.rmtree(doomed)
        removed.append(row["trial"])
    for leftover in output.glob(".deleting-trial-*"):  # a removal a kill interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    if removed:
        log(f"[sweep] --keep best: removed {len(removed)} trial folders")
    return removed


def write_outputs(s, study, log=print) -> dict:
    """Print the table and write the outputs; a summary of what was written."""
    out = Path(s.output)
    table = rows(study, s)
    log(format_table(table))
    write_csv(out / "trials.csv", table)
    best = best_trials(study, s)
    summary = {"table": out / "trials.csv", "best": [t.number for t in best], "best_yaml": None, "plot": None}
    if best:
        write_best(s, best[0], out / "best.yaml")
        summary["best_yaml"] = out / "best.yaml"
        log(f"[sweep] best: trial {best[0].number} " + ", ".join(f"{k}={v}" for k, v in best[0].params.items())
            + (f"; Pareto front: trials {', '.join(str(t.number) for t in best)}" if len(best) > 1 else ""))
    else:
        log("[sweep] no trial finished" + (" within --max-kl" if s.max_kl is not None else "") + "; no best.yaml")
    if plot(out / "reward_kl.png", table, s.objectives[0], summary["best"], s.max_kl):
        summary["plot"] = out / "reward_kl.png"
    if s.keep == "best" and best:
        keep_best(out, table, summary["best"], log)
    return summary
