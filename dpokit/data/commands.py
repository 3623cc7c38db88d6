"""``dpokit data check | stats | convert``: the pipeline from the command line.

Each returns the exit code; a file-level problem raises UserError (exit 2 from the CLI).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from dpokit.data.clean import chars
from dpokit.data.readers import iter_records
from dpokit.data.records import KINDS, Pair, RankedList, Record, Unpaired
from dpokit.data.report import DataReport
from dpokit.data.tokenize import CHUNK, encode_many
from dpokit.errors import UserError
from dpokit.store.atomic import write_jsonl

MAX_ERRORS = 10


def _kind_name(rec: Record) -> str:
    return next(name for name, cls in KINDS.items() if isinstance(rec, cls))


def check(path: str, options, kind: str | None = None, special_tokens: Iterable[str] = (),
          out: Callable[[str], None] = print) -> int:
    """Read every record as training does, cleaning included: print the first invalid records with
    their lines, then how many records cleaning leaves and what it dropped, by reason. Returns 2
    if any record is invalid; raises UserError (exit 2) when cleaning leaves none, as training would.

    ``kind``: the record kind training converts to (the loss's); None keeps each record's own.
    """
    report = DataReport()
    options = dataclasses.replace(options, on_error="skip")  # read on past errors, to list them all
    kinds = Counter(_kind_name(rec) for rec in iter_records(path, kind, options, report, special_tokens))
    invalid = report.total("skipped")
    out(f"{path}: format {report.format or '?'}; {report.rows} input records, {invalid} invalid")
    errors = (e for e in report.events() if e["action"] == "skipped")
    for _, e in zip(range(MAX_ERRORS), errors):
        out(f"{e['record']}: {e['reason']}")
    if invalid > MAX_ERRORS:
        out(f"... and {invalid - MAX_ERRORS} more")
    found = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no records"
    out(f"after cleaning: {found} left for training, {report.total('dropped')} dropped")
    for (action, reason), n in sorted(report.counts.items()):
        if action != "skipped":
            out(f"  {action} {n}: {reason}")
    if not kinds:
        raise UserError("no records left for training" + (": see the reasons above" if report.counts else ""),
                        where=str(path))
    return 2 if invalid else 0


# --------------------------------------------------------------------------- stats

def _describe(values: list[float]) -> str:
    if not values:
        return "-"
    q = sorted(values)
    pick = lambda p: q[min(len(q) - 1, int(p * len(q)))]  # noqa: E731 - nearest-rank percentile
    return f"{statistics.fmean(q):9.1f} {pick(0.5):9.1f} {pick(0.95):9.1f} {q[-1]:9.1f}"


class _Lengths:
    """Prompt and answer lengths, in tokens (with a tokenizer) or characters, and for pairs whether
    the chosen answer is the longer one in the same unit."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.pending = tokenizer, []
        self.prompt: list[float] = []
        self.answer: list[float] = []
        self.ratio: list[float] = []
        self.longer: Counter = Counter()

    def add(self, rec: Record) -> None:
        self.pending.append(rec)
        if len(self.pending) == CHUNK:
            self.flush()

    def flush(self) -> None:
        recs, self.pending = self.pending, []
        if self.tokenizer is None:
            sizes = [(chars(r.prompt), [chars(c) for c in r.completions]) for r in recs]
        else:
            encoded = encode_many(self.tokenizer, [(r.prompt, r.completions, r.source) for r in recs])
            sizes = [(len(p), [len(c) for c in cs]) for p, cs in encoded]
        for rec, (prompt, answers) in zip(recs, sizes):
            self.prompt.append(prompt)
            self.answer += answers
            self.ratio.append(prompt / max(statistics.fmean(answers), 1))
            if isinstance(rec, Pair):
                self.longer["chosen longer" if answers[0] > answers[1] else "chosen not longer"] += 1


def _balance_lines(counts: Counter, title: str) -> list[str]:
    total = sum(counts.values())
    return [f"{title}: " + ", ".join(f"{k} {n} ({n / total:.1%})" for k, n in sorted(counts.items()))] if total else []


def stats(path: str, options, tokenizer=None, out: Callable[[str], None] = print) -> int:
    """Counts, lengths, duplicates, conflicts, label balance and annotator agreement of a file."""
    report = DataReport()
    lengths, labels = _Lengths(tokenizer), Counter()
    groups: Counter = Counter()
    for rec in iter_records(path, None, options, report):
        lengths.add(rec)
        if isinstance(rec, Unpaired):
            labels["desirable" if rec.desirable else "undesirable"] += 1
        if isinstance(rec, RankedList):
            groups[f"{len(rec.completions)} answers"] += 1
    lengths.flush()
    out("\n".join(report.lines()))
    dropped = report.summary()["dropped"]
    count = lambda word: sum(n for reason, n in dropped.items() if reason.startswith(word))  # noqa: E731
    out(f"duplicates {count('duplicate')}, conflicting records {count('conflict')} "
        f"(counted by the cleaning steps that are on)")
    unit = "tokens" if tokenizer is not None else "characters"
    out(f"{'lengths in ' + unit:22s} {'mean':>9s} {'median':>9s} {'p95':>9s} {'max':>9s}")
    for name, values in (("prompt", lengths.prompt), ("answer", lengths.answer),
                         ("prompt / mean answer", lengths.ratio)):
        out(f"{name:22s} {_describe(values)}")
    for line in _balance_lines(labels, "labels") + _balance_lines(lengths.longer, f"pairs (in {unit})") + \
            _balance_lines(groups, "lists"):
        out(line)
    return 0


# --------------------------------------------------------------------------- convert

def to_json(rec: Record) -> dict:
    """The canonical form of a record: what ``dpokit data convert`` writes, and reads back."""
    body: dict = dict(rec.meta)
    body["prompt"] = rec.prompt
    if isinstance(rec, Pair):
        body.update(chosen=rec.chosen, rejected=rec.rejected, **({"tie": True} if rec.tie else {}))
    elif isinstance(rec, RankedList):
        body.update(completions=rec.completions, **({"scores": rec.scores} if rec.scores is not None else {}))
    elif isinstance(rec, Unpaired):
        body.update(completion=rec.completion, label=rec.desirable)
    else:
        body["completion"] = rec.completion
    if rec.weight != 1.0:
        body["weight"] = rec.weight
    body["origin"] = rec.source
    return body


def report_paths(output: Path) -> tuple[Path, Path]:
    """``out.jsonl`` -> ``out.report.json``, ``out.report.txt``."""
    stem = output.name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    return output.with_name(f"{stem}.report.json"), output.with_name(f"{stem}.report.txt")


def convert(path: str, output: str, kind: str, options, special_tokens: Iterable[str] = (),
            out: Callable[[str], None] = print) -> int:
    """Convert ``path`` to canonical JSONL records of ``kind`` plus a report of every change."""
    output_path = Path(output)
    if not output_path.parent.is_dir():
        raise UserError("the output folder does not exist", where=str(output_path.parent))
    report = DataReport()
    write_jsonl(output_path, (to_json(r) for r in iter_records(path, kind, options, report, special_tokens)))
    json_path, table_path = report_paths(output_path)
    report.write_json(json_path, {"output": str(output_path)})
    report.write_table(table_path)
    out("\n".join(report.lines()))
    out(f"wrote {report.records_out} records to {output_path}; report: {json_path}, {table_path}")
    if not report.records_out:
        raise UserError("no records left: see the report", where=str(path))
    return 0


# --------------------------------------------------------------------------- merge-votes

def merge_votes(inputs: list[str], output: str, out: Callable[[str], None] = print) -> int:
    """Several annotators' votes files -> one votes file with every vote per candidate, and the
    annotators' agreement (Fleiss' kappa over a, b and tie, as ``stats`` reports it)."""
    from dpokit.data.votes import agreement, merge

    output_path = Path(output)
    if not output_path.parent.is_dir():
        raise UserError("the output folder does not exist", where=str(output_path.parent))
    merged = merge(inputs)
    if not merged:
        raise UserError("no votes in the input files", where=", ".join(inputs))
    write_jsonl(output_path, (item.row() for item in merged.values()))
    summary = agreement(merged).summary()
    by_count = Counter(len(item.votes) for item in merged.values())
    annotators = Counter(a for item in merged.values() for a in item.annotators if a is not None)
    out(f"{len(inputs)} files -> {len(merged)} candidates, {summary['votes']} votes; candidates by number of votes: "
        + ", ".join(f"{k} with {n}" for n, k in sorted(by_count.items())))
    if annotators:
        out("votes by annotator: " + ", ".join(f"{a} {n}" for a, n in sorted(annotators.items())))
    if "observed" in summary:
        kappa = summary["fleiss_kappa"]
        out(f"agreement over {summary['items_with_2+_votes']} candidates with 2+ votes: {summary['observed']:.1%} of "
            f"annotator pairs agree, Fleiss' kappa {'undefined (one choice only)' if kappa is None else kappa}, "
            f"{summary['unanimous']:.1%} unanimous")
    else:
        out("agreement: no candidate has two votes")
    out(f"wrote {output_path}")
    return 0
