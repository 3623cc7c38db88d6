"""What ``dpokit report`` reads: run folders and what they hold, checked line by line.

A folder given on the command line is one of:

- a training run (``metrics.jsonl``; ``dpokit sft|dpo``), with ``config.yaml``, ``machine.json``,
  ``data_report_*.json`` and an evaluation in ``eval/`` (or in the folder itself) when there is one;
- an online run (``online_report.json``): its rounds ``round-N/`` are training runs, and the report's
  rounds give the reward-KL path;
- a quickstart folder (``recipe.json``): its ``sft/`` and ``dpo/`` runs and the three-stage ``eval/``.

Anything unreadable is an error naming the file and line; nothing is left out without a note.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dpokit.errors import UserError

METRICS, CONFIG, MACHINE = "metrics.jsonl", "config.yaml", "machine.json"
EVAL_REPORT, SAMPLES = "eval_report.json", "samples.jsonl"
ONLINE_REPORT, RECIPE = "online_report.json", "recipe.json"


@dataclass
class Evaluation:
    """One evaluation folder: ``eval_report.json`` and, when written, ``samples.jsonl``."""

    name: str
    folder: Path
    report: dict
    samples: list[dict]
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainingRun:
    name: str
    folder: Path
    metrics: list[dict]
    config_text: str | None
    config: dict
    machine: dict | None
    data_reports: dict[str, dict]
    """``train``/``eval`` -> the data report (``data_report_NAME.json``)."""
    evaluations: list[Evaluation]
    version: dict | None
    """The registry record whose run is this folder, if the run was registered."""
    notes: list[str] = field(default_factory=list)
    """What was read with a caveat (an incomplete last line, a registry that is gone)."""


@dataclass
class OnlineRun:
    name: str
    folder: Path
    rounds: list[dict]


@dataclass
class Inputs:
    runs: list[TrainingRun] = field(default_factory=list)
    online: list[OnlineRun] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    """Evaluations of no single run: quickstart's comparison of stages, and those given with ``--eval``."""
    versions: list[dict] = field(default_factory=list)
    """Registry records (``--registry``) that carry an evaluation."""
    updates: list[dict] = field(default_factory=list)
    """Registry records that ``dpokit update`` made, oldest first (its decisions)."""
    events: list[dict] = field(default_factory=list)
    """The registry's log of promotions, refusals and rollbacks (``index.json``)."""


# -- files ----------------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror}", where=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None


def read_json(path: Path) -> dict:
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from None
    if not isinstance(value, dict):
        raise UserError(f"expected a JSON object, got {type(value).__name__}", where=str(path))
    return value


def read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """Each line an object. A last line without its newline that does not parse is a write still
    going on or cut by a kill: it is left out with a note in ``notes``; any other bad line is an error."""
    text = read_text(path)
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: an unfinished write
                notes.append(f"{path}:{number}: an incomplete last line (a run still writing, or killed) was left out")
                continue
            raise UserError(f"not valid JSON: {exc.msg}", where=f"{path}:{number}") from None
        if not isinstance(record, dict):
            raise UserError(f"expected a JSON object, got {type(record).__name__}", where=f"{path}:{number}")
        records.append(record)
    return records


def read_config(path: Path) -> tuple[str | None, dict]:
    if not path.is_file():
        return None, {}
    text = read_text(path)
    try:
        value = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None
    if not isinstance(value, dict):
        raise UserError("expected a mapping of config sections", where=str(path))
    return text, value


def read_evaluation(folder: Path, name: str) -> Evaluation:
    notes: list[str] = []
    samples = read_jsonl(folder / SAMPLES, notes) if (folder / SAMPLES).is_file() else []
    return Evaluation(name, folder, read_json(folder / EVAL_REPORT), samples, notes)


def evaluations_in(run: Path, name: str) -> list[Evaluation]:
    """``dpokit eval --output RUN`` or ``--output RUN/eval``: the places a run's evaluation is kept."""
    return [read_evaluation(f, name if f == run else f"{name}/{f.name}")
            for f in (run, run / "eval") if (f / EVAL_REPORT).is_file()]


# -- a training run ---------------------------------------------------------------------------------

def read_training_run(folder: Path, name: str) -> TrainingRun:
    notes: list[str] = []
    metrics = read_jsonl(folder / METRICS, notes)
    config_text, config = read_config(folder / CONFIG)
    machine = read_json(folder / MACHINE) if (folder / MACHINE).is_file() else None
    reports = {p.stem.removeprefix("data_report_"): read_json(p) for p in sorted(folder.glob("data_report_*.json"))}
    version = registered_version(folder, config, notes)
    return TrainingRun(name, folder, metrics, config_text, config, machine, reports, evaluations_in(folder, name),
                       version, notes)


def registered_version(folder: Path, config: dict, notes: list[str]) -> dict | None:
    """The record of the registry the run's config names (``train.registry``) whose run is this folder."""
    root = (config.get("train") or {}).get("registry")
    if not root:
        return None
    if not Path(root).is_dir():
        notes.append(f"the run names registry {root}, which is not there now")
        return None
    here = str(folder.resolve())
    found = [r for r in registry_records(Path(root)) if r.get("run") == here]
    return found[-1] if found else None


def registry_records(root: Path) -> list[dict]:
    import dpokit.config  # noqa: F401  (store.versions reads config's field names; load config first)
    from dpokit.store.versions import Registry

    registry = Registry(root).require()
    current = registry.current()
    return [{**r, "current": r["id"] == current} for r in registry.records()]


# -- what a folder on the command line is ---------------------------------------------------------

def registry_events(root: Path) -> list[dict]:
    import dpokit.config  # noqa: F401  (as registry_records)
    from dpokit.store.versions import Registry

    return Registry(root).events()


def load_inputs(folders: list[str], evaluations: list[str] = (), registry: str | None = None) -> Inputs:
    inputs = Inputs()
    paths = [Path(f) for f in folders]
    for path, name in zip(paths, display_names(paths)):
        add_folder(inputs, path, name)
    extra = [Path(e) for e in evaluations]
    for path, name in zip(extra, display_names(extra)):
        if not (path / EVAL_REPORT).is_file():
            raise UserError(f"no {EVAL_REPORT} here: not an evaluation folder (dpokit eval --output)", where=str(path))
        inputs.evaluations.append(read_evaluation(path, name))
    if registry:
        records = registry_records(Path(registry))
        inputs.versions = [r for r in records if (r.get("eval") or {}).get("report")]
        inputs.updates = [r for r in records if r.get("update")]
        inputs.events = registry_events(Path(registry))
    return inputs


def add_folder(inputs: Inputs, path: Path, name: str) -> None:
    if not path.is_dir():
        raise UserError("run folder not found", where=str(path))
    if (path / METRICS).is_file():
        inputs.runs.append(read_training_run(path, name))
    elif (path / ONLINE_REPORT).is_file():
        rounds = read_json(path / ONLINE_REPORT).get("rounds")
        if not isinstance(rounds, list):
            raise UserError("no list of rounds", where=str(path / ONLINE_REPORT))
        inputs.online.append(OnlineRun(name, path, rounds))
        for r in sorted(path.glob("round-*"), key=lambda p: _round_number(p)):
            if (r / METRICS).is_file():
                inputs.runs.append(read_training_run(r, f"{name}/{r.name}"))
    elif (path / RECIPE).is_file():
        for stage in ("sft", "dpo"):
            if (path / stage / METRICS).is_file():
                inputs.runs.append(read_training_run(path / stage, f"{name}/{stage}"))
        if (path / "eval" / EVAL_REPORT).is_file():
            inputs.evaluations.append(read_evaluation(path / "eval", f"{name}/eval"))
    else:
        raise UserError(f"no {METRICS} here: not a training run folder (nor an online run with {ONLINE_REPORT}, "
                        f"nor a quickstart folder with {RECIPE})", where=str(path))


def _round_number(path: Path) -> int:
    tail = path.name.removeprefix("round-")
    return int(tail) if tail.isdigit() else 1 << 30


def display_names(paths: list[Path]) -> list[str]:
    """Each folder's shortest trailing path that no other folder shares (``a/run`` and ``b/run``)."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        for n in range(1, len(mine) + 1):
            tail = mine[-n:]
            if all(other[-n:] != tail for j, other in enumerate(parts) if j != i):
                break
        names.append("/".join(tail))
    return names
