"""Logged-bandit records: reading and checking them, the arrays the off-policy estimators take, and
item_ranker training records made from the clicks.

One record per shown position (what ``dpokit.rank.simulate`` writes and the Open Bandit reader
gives):

    {"impression": 7, "context": {...features}, "slate": ["i4", "i9", "i1"], "position": 2,
     "item": "i9", "click": 0, "propensity": 0.083}

``position`` counts from 1 and ``slate[position − 1]`` is ``item``; ``propensity`` is the logging
policy's π₀(item at position | context), in (0, 1]. ``slate`` may be null where the log does not
keep the other items of a slate (Open Bandit); ``impression`` (optional) groups the records of one
slate, for the training pairs.

A bad record is a one-line ``UserError`` naming the file, the row and the field; with
``on_error="skip"`` it is skipped and counted in a ``DataReport`` instead, as ``dpokit.data`` does.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dpokit.data.report import DataReport
from dpokit.data.sources import iter_rows
from dpokit.errors import UserError
from dpokit.rank.ope import OffPolicyData


@dataclass
class Logged:
    where: str
    impression: Any
    context: dict
    slate: list[str] | None
    position: int
    """From 1."""
    item: str
    click: int
    propensity: float


def _number(row: dict, key: str, where: str, field: str | None = None) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError("missing or not a finite number", where, field or key)
    return value


def _check_ids(row: dict, known: set[str] | None, where: str) -> tuple[list[str] | None, str]:
    slate = row.get("slate")
    if slate is not None and (not isinstance(slate, list) or not slate):
        raise UserError("must be a non-empty list of item ids, or null", where, "slate")
    if "item" not in row or row["item"] is None:
        raise UserError("missing", where, "item")
    item = str(row["item"])
    slate = None if slate is None else [str(s) for s in slate]
    if known is not None:
        for i, sid in enumerate(slate or []):
            if sid not in known:
                raise UserError(f"unknown item id {sid!r} (not in the item table)", where, f"slate[{i}]")
        if item not in known:
            raise UserError(f"unknown item id {item!r} (not in the item table)", where, "item")
    return slate, item


def parse_logged(row: dict, where: str, known: set[str] | None, columns: Iterable[str],
                 numeric: Iterable[str] = ()) -> Logged:
    """One checked record; ``known`` item ids (None: any), ``columns`` the context must have,
    ``numeric`` those of them that must be finite numbers."""
    ctx = row.get("context")
    if not isinstance(ctx, dict):
        raise UserError("missing or not an object", where, "context")
    for col in columns:
        if ctx.get(col) is None:
            raise UserError("missing feature column", where, f"context.{col}")
    for col in numeric:
        _number(ctx, col, where, f"context.{col}")
    slate, item = _check_ids(row, known, where)
    position = row.get("position")
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        raise UserError("must be a whole number ≥ 1 (positions count from 1)", where, "position")
    if slate is not None and position > len(slate):
        raise UserError(f"position {position} is outside the slate of {len(slate)}", where, "position")
    if slate is not None and slate[position - 1] != item:
        shown = f"shown at position {slate.index(item) + 1}" if item in slate else "not in the slate"
        raise UserError(f"item {item!r} is {shown}, not at position {position}", where, "item")
    click = row.get("click")
    if click not in (0, 1):  # True and 1.0 read as 1
        raise UserError("must be 0 or 1", where, "click")
    propensity = _number(row, "propensity", where)
    if not 0 < propensity <= 1:
        raise UserError(f"must be in (0, 1]; got {propensity:g}", where, "propensity")
    return Logged(where, row.get("impression", where), ctx, slate, position, item, int(click), float(propensity))


def read_log(path: str | Path, item_ids: Iterable[str] | None = None, columns: Iterable[str] = (),
             on_error: str = "raise", report: DataReport | None = None, numeric: Iterable[str] = ()) -> list[Logged]:
    """Every checked record of a log file (JSON Lines, JSON, CSV, Parquet: what ``dpokit.data`` reads);
    ``columns`` and ``numeric`` as in ``parse_logged``."""
    report = report if report is not None else DataReport(str(path))
    report.source, report.format, report.kind = str(path), "logged", "logged records"
    known = None if item_ids is None else {str(i) for i in item_ids}
    columns, numeric, skipping = list(columns), list(numeric), on_error == "skip"

    def skip(err: UserError) -> None:
        report.rows += 1
        report.skip(err.where or str(path), skip_reason(err))
    return collect(iter_rows(path, skip if skipping else None),
                   lambda where, row: parse_logged(row, where, known, columns, numeric), report, skipping, path)


def collect(rows, parse, report: DataReport, skipping: bool, path) -> list[Logged]:
    """``parse(where, row)`` of every row; a bad row raises, or with ``skipping`` is counted in ``report``."""
    out = []
    for where, row in rows:
        report.rows += 1
        try:
            out.append(parse(where, row))
        except UserError as err:
            if not skipping:
                raise
            report.skip(err.where or where, skip_reason(err))
    report.records_out = len(out)
    if not out:
        raise UserError("no usable logged records" + (" left: see the skipped counts" if report.counts else ""),
                        where=str(path))
    return out


def read_item_ids(path: str | Path) -> list[str]:
    """The ids of an item table: ``items.jsonl`` or a folder holding one (a ranker folder)."""
    path = Path(path)
    path = path / "items.jsonl" if path.is_dir() else path
    ids = []
    for where, row in iter_rows(path):
        if row.get("id") is None:
            raise UserError("item without an id", where, "id")
        ids.append(str(row["id"]))
    if not ids:
        raise UserError("no items", where=str(path))
    return ids


def skip_reason(err: UserError) -> str:
    return (f"field '{err.field}': " if err.field else "") + err.detail


def off_policy_data(records: list[Logged], target, item_ids: list[str]) -> OffPolicyData:
    """The estimators' arrays for ``target`` (anything with ``position_probs(contexts, k)`` ->
    (contexts, k, items) in ``item_ids`` order), scored once per distinct context."""
    index = {str(i): j for j, i in enumerate(item_ids)}
    keys = [json.dumps(r.context, sort_keys=True) for r in records]
    distinct = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    contexts = [None] * len(distinct)
    for key, r in zip(keys, records):
        contexts[distinct[key]] = r.context
    k = max(r.position for r in records)
    probs = target.position_probs(contexts, k)
    position = np.array([r.position - 1 for r in records])
    return OffPolicyData(item=np.array([index[r.item] for r in records]), position=position,
                         click=np.array([r.click for r in records], dtype=float),
                         propensity=np.array([r.propensity for r in records]),
                         target=probs[[distinct[key] for key in keys], position])


def training_records(records: list[Logged], mode: str = "pairs", negatives: int = 1, ips: bool = True,
                     clip: float = 0.0) -> tuple[list[dict], dict]:
    """item_ranker records from the clicks, and counts of what was made and left out.

    ``pairs``: each clicked item before each shown item not clicked in its impression;
    ``skip_above``: only before those shown above it (skipped by the user, so surely examined);
    ``lists``: the clicked item then the first ``negatives`` non-clicked shown items, in slate order
    (for ``softmax_dpo``, whose winner is the first; ``plackett_luce`` would also read the slate
    order of the negatives as a preference). Impressions with too few negatives are counted, not
    used. The weight is 1/propensity of the clicked record (clipped at ``clip`` if > 0) with ``ips``,
    else 1. Each record also carries ``log_propensities``, the logger's log π₀ of each of its items
    at the position it was shown, for the logged reference (``--ref logged``)."""
    if mode not in ("pairs", "skip_above", "lists"):
        raise UserError(f"unknown mode {mode!r} (pairs, skip_above, lists)", where="mode")
    if negatives < 1:
        raise UserError("must be ≥ 1", where="negatives")
    groups: dict = defaultdict(list)
    for r in records:
        groups[r.impression].append(r)
    out, counts = [], {"impressions": len(groups), "clicks": 0, "without_negatives": 0, "records": 0}
    for group in groups.values():
        group.sort(key=lambda r: r.position)
        for clicked in (r for r in group if r.click):
            counts["clicks"] += 1
            negs = [r for r in group if not r.click and (mode != "skip_above" or r.position < clicked.position)]
            weight = _weight(clicked, ips, clip)
            if mode == "lists":
                lists = [negs[:negatives]] if len(negs) >= negatives else []
            else:
                lists = [[n] for n in negs]
            counts["without_negatives"] += not lists
            out += [{"context": clicked.context, "items": [clicked.item, *(n.item for n in neg)], "weight": weight,
                     "log_propensities": [math.log(r.propensity) for r in (clicked, *neg)]} for neg in lists]
    counts["records"] = len(out)
    return out, counts


def _weight(r: Logged, ips: bool, clip: float) -> float:
    w = 1.0 / r.propensity if ips else 1.0
    w = min(w, clip) if clip > 0 else w
    if not (math.isfinite(w) and w > 0):  # the reader's propensity check makes this unreachable
        raise UserError(f"weight {w} is not a positive finite number", r.where, "propensity")
    return w


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path
