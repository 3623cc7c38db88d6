"""The data pipeline, file to typed records, one lazy stream:

read (``sources``) -> map columns -> parse the format (``formats``) -> convert to the kind asked
for (``kinds``) -> clean (``clean``). Every record skipped, dropped, altered or added is written
to a ``DataReport`` with its reason; nothing leaves the stream unreported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from dpokit.data.clean import clean
from dpokit.data.fields import lookup, number, parse_columns, present, rename, text_field
from dpokit.data.formats import FORMATS, Context, detect, parse_list, parse_pair, parse_sft, parse_unpaired
from dpokit.data.kinds import KIND_NAMES, to_kind
from dpokit.data.records import Record
from dpokit.data.report import DataReport
from dpokit.data.sources import iter_json_objects, iter_rows
from dpokit.errors import UserError

__all__ = ["iter_records", "read_records", "iter_json_objects", "iter_rows", "text_field", "parse_pair",
           "parse_sft", "parse_list", "parse_unpaired"]


def _reason(err: UserError) -> str:
    return (f"field '{err.field}': " if err.field else "") + err.detail


def _with_hint(err: UserError, row: dict, fmt: str | None, ctx: Context) -> UserError:
    """Name the likely cause when a record of another format sits in the file."""
    forced, other = ctx.options.format != "auto", detect(row, ctx.columns)
    if forced or fmt is None or other in (None, fmt) or not err.field:
        return err
    return UserError(f"{err.detail}; this record looks like format '{other}' but the file's first record was "
                     f"'{fmt}' (one format per file, or name it with --format)", err.where, err.field)


def _apply_common_fields(row: dict, records: list[Record], where: str, options) -> None:
    """Fields any format may carry: ``weight`` (multiplies each record's weight) and the
    balancing column (kept in ``meta``)."""
    if present(row, "weight"):
        weight = number(row["weight"], where, "weight")
        if weight < 0:
            raise UserError(f"must be ≥ 0; got {weight:g}", where, "weight")
        for rec in records:
            rec.weight *= weight
    if options.balance != "off" and options.balance_by != "label":
        value = lookup(row, options.balance_by)
        if value is None:
            raise UserError("missing (the balancing key, data.balance_by)", where, options.balance_by)
        for rec in records:
            rec.meta[options.balance_by] = value


def _parse(path: str | Path, ctx: Context) -> Iterator[Record]:
    options, report = ctx.options, ctx.report
    skipping = options.on_error == "skip"

    def skip_unread(err: UserError) -> None:
        report.rows += 1
        report.skip(err.where or str(path), _reason(err))
    fmt = None if options.format == "auto" else options.format
    for where, row in iter_rows(path, skip_unread if skipping else None):
        report.rows += 1
        try:
            row = rename(row, ctx.columns, where)
            if fmt is None:
                fmt = detect(row, ctx.columns)
                if fmt is None:
                    raise UserError(f"cannot tell the format from the fields ({', '.join(map(str, row)) or 'none'}); "
                                    "name it (--format) or map the fields (--columns)", where)
                report.format = fmt
            records = FORMATS[fmt](row, ctx, where)
            _apply_common_fields(row, records, where, options)
        except UserError as err:
            err = _with_hint(err, row, fmt, ctx)
            if not skipping:
                raise err from None
            report.skip(err.where or where, _reason(err))
            continue
        yield from records


def iter_records(path: str | Path, kind: str, options=None, report: DataReport | None = None,
                 special_tokens: Iterable[str] = ()) -> Iterator[Record]:
    """Stream the records of a file as ``kind`` ('pair', 'list', 'unpaired' or 'sft'; None keeps
    each record's own kind), parsed, converted and cleaned as ``options`` (a ``DataConfig``;
    defaults if None) say.

    ``special_tokens``: a tokenizer's special-token strings, for the leaked-template check.
    """
    from dpokit.config import DataConfig

    options = options if options is not None else DataConfig()
    report = report if report is not None else DataReport()
    if kind is not None and kind not in KIND_NAMES:
        raise UserError(f"unknown record kind {kind!r} (known: pair, list, unpaired, sft)", where="kind")
    kind = KIND_NAMES.get(kind)
    report.source, report.kind = str(path), kind or ""
    report.format = "" if options.format == "auto" else options.format
    ctx = Context(options, report, parse_columns(options.columns))
    records = _parse(path, ctx)
    converted = records if kind is None else (out for rec in records for out in to_kind(rec, kind, options, report))
    for rec in clean(converted, kind, options, report, special_tokens):
        report.records_out += 1
        yield rec


def read_records(path: str | Path, kind: str, options=None, report: DataReport | None = None,
                 special_tokens: Iterable[str] = ()) -> list[Record]:
    """All records of a file as ``kind``: ``iter_records`` collected; raises if none are left."""
    report = report if report is not None else DataReport()
    records = list(iter_records(path, kind, options, report, special_tokens))
    if not records:
        left = " left: see the report" if report.counts else ""
        raise UserError(f"no records{left}", where=str(path))
    return records
