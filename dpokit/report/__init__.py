"""``dpokit report``: one self-contained HTML page of runs (curves, reward against KL, held-out
samples, data reports, configs, lineage, machine), readable offline on a phone or a laptop."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from dpokit.report import details, figures
from dpokit.report.html import esc, page
from dpokit.report.runs import Inputs, load_inputs
from dpokit.store.atomic import write_text_atomic


def render(inputs: Inputs, title: str = "dpokit report") -> str:
    """The page's HTML."""
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs = inputs.runs
    body = [f"<h1>{esc(title)}</h1><p class=\"muted\">generated {esc(when)} by dpokit report</p>"]
    if runs or inputs.online:
        body.append(details.runs_list(inputs))
    if runs:
        body += [figures.curves_section(runs, eval_keys=False), figures.curves_section(runs, eval_keys=True)]
    body.append(figures.reward_kl_section(inputs))
    if runs:
        body.append(details.final_metrics(runs))
    body += [details.versions_table(inputs), details.registry_timeline(inputs), details.evaluations(inputs)]
    if runs:
        body.append('<section id="details"><h2>Run details</h2>'
                    + "".join(details.run_section(i, run) for i, run in enumerate(runs)) + "</section>")
    return page(title, "".join(body))


def build_report(run_dirs: list[str], output: str, evaluations: list[str] = (), registry: str | None = None,
                 title: str = "dpokit report") -> Path:
    """Read the folders and write the page to ``output`` (whole or not at all)."""
    inputs = load_inputs(run_dirs, evaluations, registry)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(inputs, title))
    return path


__all__ = ["build_report", "load_inputs", "render"]
