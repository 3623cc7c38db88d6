"""Files -> raw records (``where``, dict), streamed: nothing here holds a whole file in memory,
except a JSON array, which is parsed whole (use JSON Lines for files larger than memory).

- JSON Lines (``.jsonl``, also ``.gz``), line by line; ``where`` is ``file:line``.
- a JSON array (``.json``, or any file whose first character is ``[``); ``file:record N``.
- CSV / TSV (``.csv``, ``.tsv``, also ``.gz``), row by row; ``file:line`` of the row's first line.
- Parquet (``.parquet``), batch by batch; ``file:row N``.
- a folder written by ``datasets.Dataset.save_to_disk`` (memory-mapped Arrow); ``folder:row N``.

A line that cannot be decoded raises UserError, or with ``on_error="skip"`` is reported as
skipped and the reading goes on.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from dpokit.data.fields import JSON
from dpokit.errors import UserError

Rows = Iterator[tuple[str, dict[str, Any]]]
Skip = Callable[[UserError], None]
"""Called with the error of a row that is skipped; ``None`` means errors are raised."""

BATCH_ROWS = 1024  # Parquet / Arrow rows converted to Python at a time
BAD_GZIP = (OSError, EOFError, zlib.error)  # what a damaged .gz raises while it is read
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate: half of a pair (fine when the other half follows) or alone."""


def iter_rows(path: str | Path, skip: Skip | None = None) -> Rows:
    """Yield (``where``, record) for every record of a supported file or dataset folder."""
    path = Path(path)
    if path.is_dir():
        yield from _hf_rows(path)
        return
    if not path.is_file():
        raise UserError("file not found", where=str(path))
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif name.endswith((".csv", ".tsv")):
        yield from _csv_rows(path, "\t" if name.endswith(".tsv") else ",", skip)
    else:
        yield from _json_rows(path, skip)


def iter_json_objects(path: str | Path) -> Rows:
    """Every record of a file (kept under its old name; reads every format ``iter_rows`` does)."""
    return iter_rows(path)


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.name.lower().endswith(".gz") else open(path, mode)


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line), decoded line by line so that a bad byte names its line."""
    lineno = 0
    try:
        with _open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:  # utf-8-sig: a byte-order mark some editors write is not part of the first record
                    yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"not UTF-8 text (byte {exc.start} of the line)",
                                    where=f"{path}:{lineno}") from None
    except BAD_GZIP as exc:  # a damaged .gz
        raise UserError(f"cannot read: {exc}", where=str(path)) from None


def _first_char(path: Path) -> str:
    for _, line in _text_lines(path):
        if line.strip():
            return line.lstrip()[0]
    raise UserError("file is empty", where=str(path))


def _json_rows(path: Path, skip: Skip | None) -> Rows:
    first = _first_char(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json") or (not name.endswith(".jsonl") and first == "["):
        yield from _json_array(path)
        return
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = _check_object(_decode(line, where), where, SURROGATE_ESCAPE.search(line) is not None)
        except UserError as err:
            if skip is None:
                raise
            skip(err)
            continue
        yield row


def _decode(line: str, where: str) -> Any:
    try:
        return JSON.decode(line)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"invalid JSON: {getattr(exc, 'msg', exc)}", where=where) from None


def _json_array(path: Path) -> Rows:
    text = "".join(line for _, line in _text_lines(path))
    try:
        items = JSON.decode(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        hint = " (JSON Lines? name the file .jsonl)" if "Extra data" in str(exc) else ""
        raise UserError(f"invalid JSON: {getattr(exc, 'msg', exc)}{hint}",
                        where=f"{path}:{line}" if line else str(path)) from None
    except RecursionError:
        raise UserError("invalid JSON: nested too deeply", where=str(path)) from None
    if not isinstance(items, list):
        raise UserError("expected a JSON array of records", where=str(path))
    surrogates = SURROGATE_ESCAPE.search(text) is not None
    del text
    for i, obj in enumerate(items, 1):
        yield _check_object(obj, f"{path}:record {i}", surrogates)


def _check_object(obj: Any, where: str, surrogates: bool = False) -> tuple[str, dict[str, Any]]:
    """``surrogates``: the text had a surrogate escape, so look for a lone one (not text: it has no
    UTF-8 form, and would fail later, when written or tokenized)."""
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}", where=where)
    if surrogates:
        _reject_lone_surrogates(obj, where, "")
    return where, obj


def _reject_lone_surrogates(value: Any, where: str, key: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(f"contains a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}), which is not text",
                            where, key or None) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _reject_lone_surrogates(k, where, key)
            _reject_lone_surrogates(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_lone_surrogates(v, where, f"{key}[{i}]")


def _csv_rows(path: Path, delimiter: str, skip: Skip | None) -> Rows:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long answers exceed the 128 KiB default
    _first_char(path)
    # newline="": the csv module finds line ends itself, also inside quoted cells
    with io.TextIOWrapper(_open(path, "rb"), encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
            line = reader.line_num
            for values in reader:
                where, line = f"{path}:{line + 1}", reader.line_num
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(header):
                    err = UserError(f"{len(values)} fields but the header has {len(header)}", where=where)
                    if skip is None:
                        raise err
                    skip(err)
                    continue
                yield where, dict(zip(header, values))  # a short row lacks its last fields: "missing"
        except csv.Error as exc:
            raise UserError(f"invalid CSV: {exc}", where=f"{path}:{reader.line_num}") from None
        except UnicodeDecodeError:  # decoded in blocks, so the line is not known
            raise UserError("not UTF-8 text", where=str(path)) from None
        except BAD_GZIP as exc:
            raise UserError(f"cannot read: {exc}", where=str(path)) from None
        except StopIteration:
            return


def _parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", row
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"cannot read as Parquet: {exc}", where=str(path)) from None


def _hf_rows(path: Path) -> Rows:
    """A ``save_to_disk`` folder; a DatasetDict gives its ``train`` split (or its only split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"not a dataset folder written by save_to_disk ({str(exc).splitlines()[0]})",
                        where=str(path)) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" not in ds and len(splits) != 1:
            raise UserError(f"several splits ({', '.join(splits)}) and none is 'train'; save one split",
                            where=str(path))
        ds = ds["train" if "train" in ds else splits[0]]
    n = 0
    for batch in ds.iter(batch_size=BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            n += 1
            yield f"{path}:row {n}", dict(zip(columns, values))
