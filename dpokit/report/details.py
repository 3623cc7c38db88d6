"""The sections in words and tables: the runs, their final metrics, lineage, machine, data reports
and configs, and each evaluation with its held-out samples (searchable, filterable by who won)."""

from __future__ import annotations

from dpokit.report.figures import ordered_keys
from dpokit.report.html import cell, definitions, esc, number, table
from dpokit.report.plots import colour, finite
from dpokit.report.runs import Evaluation, Inputs, TrainingRun


def swatch(index: int) -> str:
    return f'<span class="swatch" style="background:{colour(index)}"></span>'


def runs_list(inputs: Inputs) -> str:
    items = [f"<li>{swatch(i)}<a href=\"#run-{i}\">{esc(run.name)}</a> "
             f"<span class=\"muted\">{esc(run.folder)}</span></li>" for i, run in enumerate(inputs.runs)]
    items += [f"<li>online run {esc(o.name)} <span class=\"muted\">{esc(o.folder)}, {len(o.rounds)} rounds</span></li>"
              for o in inputs.online]
    return f'<section id="runs"><h2>Runs</h2><ul>{"".join(items)}</ul></section>'


def last_values(run: TrainingRun) -> dict:
    """Each metric's last logged value (a step's own, or the last evaluation's)."""
    out: dict = {}
    for record in run.metrics:
        if "event" not in record:
            out.update({k: v for k, v in record.items() if finite(v)})
    return out


def final_metrics(runs: list[TrainingRun]) -> str:
    lasts = [last_values(run) for run in runs]
    keys = ["step"] + ordered_keys(runs, False) + ordered_keys(runs, True)
    rows = [[f"<td><code>{esc(k)}</code></td>", *(cell(values.get(k)) for values in lasts)] for k in keys
            if any(k in values for values in lasts)]
    return (f'<section id="final"><h2>Final metrics</h2>'
            f'{table(["metric", *(run.name for run in runs)], rows, "the last logged value of each metric")}</section>')


# -- one run ------------------------------------------------------------------------------------------

def _get(config: dict, section: str, key: str):
    return (config.get(section) or {}).get(key)


def lineage(run: TrainingRun) -> str:
    c = run.config
    if not c:
        return '<p class="muted">no config.yaml in this run folder</p>'
    ref = _get(c, "model", "ref_path")
    items = [("starting model", esc(_get(c, "model", "path") or "—")),
             ("reference", esc(ref or "the starting model") + f" <span class=\"muted\">(train.ref: "
                                                              f"{esc(_get(c, 'train', 'ref') or '—')})</span>"),
             ("loss", esc(_get(c, "loss", "name") or "—") + (f", β {number(_get(c, 'loss', 'beta'))}"
                                                             if _get(c, "loss", "beta") is not None else "")),
             ("training data", esc(_get(c, "data", "train") or "—")),
             ("held-out data", esc(_get(c, "data", "eval") or "—"))]
    v = run.version
    if v:
        ref_v = (v.get("reference") or {}).get("version")
        items += [("registry version", f"<b>{esc(v['id'])}</b>{' (current)' if v.get('current') else ''} of "
                                       f"{esc(_get(c, 'train', 'registry'))}, created {esc(v.get('created', '?'))}"),
                  ("parent version", esc(v.get("parent") or "none") + f" <span class=\"muted\">"
                                                                      f"{esc(v.get('parent_model') or '')}</span>"),
                  ("reference version", esc(ref_v or "none")),
                  ("model", f"{esc(v.get('model'))} <span class=\"muted\">sha256 {esc(v.get('model_sha256'))}</span>")]
    elif _get(c, "train", "registry"):
        items.append(("registry version", "none found for this run folder"))
    else:
        items.append(("registry version", '<span class="muted">not registered (no train.registry)</span>'))
    return definitions(items)


MACHINE_KEYS = ("started", "cpu", "flags", "torch_capability", "threads", "device", "gpu", "gpu_capability",
                "processes", "precision", "precision_reason", "onednn_bf16", "onednn_fp16", "torch", "cuda", "python",
                "platform", "host")


def machine(run: TrainingRun) -> str:
    m = run.machine
    if m is None:
        return '<p class="muted">not recorded (machine.json is written by runs started with this version of dpokit)</p>'
    keys = [k for k in MACHINE_KEYS if k in m] + sorted(k for k in m if k not in MACHINE_KEYS and k != "earlier")
    items = [(k, esc(", ".join(map(str, m[k])) if isinstance(m[k], list) else m[k])) for k in keys]
    for earlier in m.get("earlier", []):
        items.append(("an earlier start", esc(f"{earlier.get('started', '?')}: {earlier.get('cpu', '?')}, "
                                              f"{earlier.get('device', '?')}, {earlier.get('precision', '?')}")))
    return definitions(items)


EXAMPLES = 3
"""Records named per (action, reason) of a data report."""


def data_report(name: str, report: dict) -> str:
    head = definitions([(k, esc(report.get(k, "—")))
                        for k in ("input", "format", "kind", "rows_read", "records_out")])
    examples: dict[tuple[str, str], list[str]] = {}
    for event in report.get("events") or []:
        if isinstance(event, dict):
            found = examples.setdefault((str(event.get("action")), str(event.get("reason"))), [])
            if len(found) < EXAMPLES:
                found.append(str(event.get("record")))
    rows = []
    for action in ("skipped", "dropped", "altered", "added"):
        for reason, count in (report.get(action) or {}).items():
            shown = examples.get((action, reason), [])
            rows.append([cell(action), cell(reason), cell(count), f"<td>{'<br>'.join(esc(x) for x in shown)}</td>"])
    changes = (table(["action", "reason", "records", f"examples (first {EXAMPLES})"], rows) if rows
               else '<p class="muted">no record skipped, dropped, altered or added</p>')
    known = {"input", "format", "kind", "rows_read", "records_out", "skipped", "dropped", "altered", "added", "events"}
    extra = [[cell(k), cell(v)] for k, v in report.items() if k not in known]
    more = table(["", ""], extra) if extra else ""
    return f"<h4>data: {esc(name)}</h4>{head}{changes}{more}"


def events(run: TrainingRun) -> str:
    rows = [[cell(r.get("step")), cell(r.get("event")),
             cell({k: v for k, v in r.items() if k not in ("step", "event")})] for r in run.metrics if "event" in r]
    return f"<h4>events</h4>{table(['step', 'event', 'details'], rows)}" if rows else ""


def run_section(index: int, run: TrainingRun) -> str:
    notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
    data = "".join(data_report(name, r) for name, r in run.data_reports.items()) or \
        '<p class="muted">no data_report_*.json in this run folder</p>'
    config = (f"<details><summary>config.yaml (resolved)</summary><pre>{esc(run.config_text)}</pre></details>"
              if run.config_text is not None else '<p class="muted">no config.yaml</p>')
    return (f'<section id="run-{index}"><h3>{swatch(index)}{esc(run.name)}</h3>'
            f'<p class="muted">{esc(run.folder.resolve())}</p>{f"<ul>{notes}</ul>" if notes else ""}'
            f"<h4>lineage</h4>{lineage(run)}<h4>machine</h4>{machine(run)}{data}{events(run)}{config}</section>")


# -- evaluations ----------------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def winner(sample: dict) -> str:
    """Who won by the judge's P(policy beats reference): policy, reference, tie, or failed (no judgement)."""
    p = sample.get("judge")
    if not finite(p):
        return "failed"
    return "policy" if p > 0.5 else "reference" if p < 0.5 else "tie"


HEADERS = {"judge": "P(policy beats reference)", "score_policy": "judge score: policy",
           "score_reference": "judge score: reference"}


def samples_table(ev: Evaluation) -> str:
    if not ev.samples:
        return '<p class="muted">no samples.jsonl in this folder</p>'
    columns = list(dict.fromkeys(k for s in ev.samples for k in s if k != "source"))
    columns.sort(key=lambda k: (k != "prompt", k in HEADERS or k.startswith("score_")))
    judged = "judge" in columns
    labels = [HEADERS.get(k, k) for k in columns] + (["who won"] if judged else [])
    rows = []
    for i, s in enumerate(ev.samples, 1):
        won = winner(s) if judged else ""
        cells = [f'<td class="num" data-label="#">{i}</td>']
        for k, label in zip(columns, labels):
            v = s.get(k)
            if isinstance(v, str):
                extra = f'<br><span class="muted">{esc(s["source"])}</span>' if k == "prompt" and "source" in s else ""
                mark = " won" if k == won else ""
                cells.append(f'<td class="text{mark}" data-label="{esc(label)}">{esc(v)}{extra}</td>')
            else:
                cells.append(cell(v).replace("<td", f'<td data-label="{esc(label)}"', 1))
        if judged:
            cells.append(f'<td data-label="who won">{esc(won)}</td>')
        rows.append(f'<tr data-winner="{esc(won)}">{"".join(cells)}</tr>')
    pick = ""
    if judged:
        options = "".join(f'<option value="{w}">{w}</option>' for w in ("policy", "reference", "tie", "failed"))
        pick = f'<select aria-label="who won"><option value="">everyone</option>{options}</select>'
    head = "".join(f"<th>{esc(h)}</th>" for h in ["#", *labels])
    return (f'<div class="samples"><div class="controls"><input type="search" placeholder="search the samples" '
            f'aria-label="search the samples">{pick}<span class="count muted"></span></div>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            "</div>")


def evaluation_section(ev: Evaluation) -> str:
    rows = [[f"<td><code>{esc(k)}</code></td>", cell(v)] for k, v in _flatten(ev.report)]
    summary = table(["", ""], rows)
    notes = "".join(f"<li>{esc(n)}</li>" for n in ev.notes)
    return (f"<h3>{esc(ev.name)}</h3><p class=\"muted\">{esc(ev.folder.resolve())}</p>"
            f"{f'<ul>{notes}</ul>' if notes else ''}"
            f"<details open><summary>eval_report.json</summary>{summary}</details>"
            f"<h4>held-out samples ({len(ev.samples)})</h4>{samples_table(ev)}")


def evaluations(inputs: Inputs) -> str:
    found = [ev for run in inputs.runs for ev in run.evaluations] + inputs.evaluations
    if not found:
        return ""
    return f'<section id="evaluations"><h2>Evaluations</h2>{"".join(map(evaluation_section, found))}</section>'


def versions_table(inputs: Inputs) -> str:
    if not inputs.versions:
        return ""
    rows = []
    for r in inputs.versions:
        rep = r["eval"]["report"]
        rows.append([cell(r["id"] + (" (current)" if r.get("current") else "")), cell(r.get("created")),
                     cell(r.get("parent")), cell(r.get("loss")), cell(r.get("steps")), cell(rep.get("win_rate")),
                     cell(rep.get("kl_sampled")), cell(r.get("model"))])
    return ('<section id="versions"><h2>Registry versions with an evaluation</h2>'
            f'{table(["version", "created", "parent", "loss", "steps", "win rate", "sampled KL", "model"], rows)}'
            "</section>")



def registry_timeline(inputs: Inputs) -> str:
    """``dpokit update``'s decisions, then the registry's log of what became current and why."""
    if not inputs.updates and not inputs.events:
        return ""
    rows = []
    for r in inputs.updates:
        u = r["update"]
        d, f = u.get("decision"), u.get("figures") or {}
        rows.append([cell(r["id"]), cell(u.get("champion")),
                     cell("pending" if d is None else "promoted" if d["promoted"] else "refused"),
                     cell(f.get("win_rate")), cell([f.get("win_low"), f.get("win_high")] if f else None),
                     cell(f.get("kl")), cell("; ".join(d["reasons"]) if d and d["reasons"] else None)])
    events = [[cell(e.get("time")), cell(e.get("action")), cell(e.get("current")),
               cell("; ".join(e.get("reasons", [])) or None)] for e in inputs.events]
    return ('<section id="timeline"><h2>Registry timeline</h2>'
            + (table(["challenger", "champion", "decision", "win rate", "95% CI", "KL to champion", "reasons"], rows,
                     "each dpokit update: the challenger, the champion it was tested against, and the decision")
               if rows else "")
            + (table(["time", "action", "current after", "reasons"], events,
                     "promotions, refusals and rollbacks, oldest first") if events else "")
            + "</section>")
