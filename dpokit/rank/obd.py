"""The Open Bandit Dataset (Saito et al. 2021) as logged records, and a context-free target policy
estimated from a policy's own log.

An OBD log is a CSV (often gzip) with one row per shown position: ``item_id``, ``position``
(1–3), ``click``, ``propensity_score`` (the serving policy's probability of that item at that
position), hashed ``user_feature_*`` and numeric ``user-item_affinity_*`` columns. Each row becomes
a logged record with the user columns as its context and ``slate`` null: OBD does not tie the three
positions of one page view together. Its items file has ``item_id`` and ``item_feature_*``
(the first numeric, the rest hashed).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dpokit.data.report import DataReport
from dpokit.data.sources import iter_rows
from dpokit.errors import UserError
from dpokit.rank.logs import Logged, collect, parse_logged

NUMBERS = {"position": int, "click": int, "propensity_score": float}


def read_obd_items(path: str | Path) -> list[dict]:
    """The items file as an item table (``id`` and the features; ``item_feature_0`` numeric)."""
    out = []
    for where, row in iter_rows(path):
        if not row.get("item_id"):
            raise UserError("missing", where, "item_id")
        item = {"id": row["item_id"]}
        for key, value in row.items():
            if key.startswith("item_feature_"):
                item[key] = _convert(value, float, where, key) if key == "item_feature_0" else value
        out.append(item)
    if not out:
        raise UserError("no items", where=str(path))
    return out


def _convert(value, tp, where: str, key: str):
    try:
        out = tp(value)
    except (TypeError, ValueError):
        raise UserError(f"not a {'whole number' if tp is int else 'number'}: {value!r}", where, key) from None
    return out


def obd_record(row: dict, where: str, known: set[str] | None, columns=()) -> Logged:
    """One row as a checked record; ``columns``: the user columns every row must have (a short CSV
    row lacks its last ones)."""
    for key in ("item_id", *NUMBERS):
        if row.get(key) in (None, ""):
            raise UserError("missing column", where, key)
    context = {k: v for k, v in row.items() if k.startswith("user_feature_")}
    context.update({k: _convert(v, float, where, k) for k, v in row.items() if k.startswith("user-item_affinity_")})
    record = {"context": context, "slate": None, "item": row["item_id"],
              **{k: _convert(row[k], tp, where, k) for k, tp in NUMBERS.items()}}
    record["propensity"] = record.pop("propensity_score")
    return parse_logged(record, where, known, columns)


def read_obd(path: str | Path, item_ids=None, on_error: str = "raise", report: DataReport | None = None) -> list[Logged]:
    """Every row of an OBD log as a checked logged record (``on_error="skip"``: bad rows counted)."""
    report = report if report is not None else DataReport(str(path))
    report.source, report.format, report.kind = str(path), "open bandit", "logged records"
    known = None if item_ids is None else {str(i) for i in item_ids}
    columns: list[str] = []  # the header's user columns, from the first row

    def parse(where: str, row: dict) -> Logged:
        columns[:] = columns or [k for k in row if k.startswith(("user_feature_", "user-item_affinity_"))]
        return obd_record(row, where, known, columns)

    return collect(iter_rows(path), parse, report, on_error == "skip", path)


class EmpiricalPolicy:
    """π(a | p) = the share of a policy's own records at position p that show item a: its action
    distribution per position averaged over the log's period, ignoring the context (which OBD's
    Bernoulli Thompson sampling policy does not use either)."""

    def __init__(self, records: list[Logged], item_ids: list[str], positions: int):
        index = {str(i): j for j, i in enumerate(item_ids)}
        counts = np.zeros((positions, len(item_ids)))
        for (p, item), n in Counter((r.position, r.item) for r in records).items():
            if p > positions:
                raise UserError(f"position {p} is beyond the {positions} asked for", where="records", field="position")
            counts[p - 1, index[item]] = n
        totals = counts.sum(1, keepdims=True)
        if (totals == 0).any():
            raise UserError("the log has no record at some position", where="records", field="position")
        self.probs = counts / totals

    def position_probs(self, contexts: list[dict], k: int) -> np.ndarray:
        return np.broadcast_to(self.probs[:k], (len(contexts), k, self.probs.shape[1]))
