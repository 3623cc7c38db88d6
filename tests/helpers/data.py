"""Helpers for the data pipeline tests: write small files, run the pipeline with options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dpokit.config import DataConfig
from dpokit.data import DataReport, read_records

OFF = {"dedup": "off", "drop_empty": False, "drop_identical": False, "drop_conflicts": False, "drop_leaks": False}
"""Every cleaning step switched off: the records exactly as the format gives them."""


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def options(**fields) -> DataConfig:
    return dataclasses.replace(DataConfig(), **fields)


def run(path: Path, kind: str | None = "pair", **fields) -> tuple[list, DataReport]:
    """(records, report) of ``path`` read as ``kind`` with the given DataConfig fields."""
    report = DataReport()
    records = read_records(path, kind, options(**fields), report)
    return records, report


def counts(report: DataReport) -> dict[tuple[str, str], int]:
    return dict(report.counts)
