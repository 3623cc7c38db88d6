"""Read, clean and tokenize a file for training, with the result cached on disk.

The cache key hashes the data (the file's bytes, or every file of a dataset folder), its path
(the report names records by it), the tokenizer (vocabulary, merges, special tokens, chat
template) and every setting that changes the output; a change to any of them is a new key.
An entry is three files: ``KEY.safetensors`` (token ids, lengths, weights, labels),
``KEY.json`` (record sources and the printed summary) and ``KEY.report.json`` (the report).
The safetensors file is written last and marks the entry complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpokit.data.readers import iter_records
from dpokit.data.report import DataReport
from dpokit.data.tokenize import TokenizedRecord, tokenize_records
from dpokit.errors import UserError

CACHE_FORMAT = 1
NOT_SETTINGS = ("train", "eval", "cache", "cache_dir")  # DataConfig fields that do not change the output


def data_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, vocab, str(tokenizer.chat_template), json.dumps(tokenizer.all_special_tokens),
             str(tokenizer.eos_token_id)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_key(path: Path, kind: str, tokenizer, options, max_length: int, max_prompt_length: int) -> str:
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in NOT_SETTINGS}
    settings.update(kind=kind, max_length=max_length, max_prompt_length=max_prompt_length)
    parts = [f"v{CACHE_FORMAT}", str(path.resolve()), data_hash(path), tokenizer_hash(tokenizer),
             json.dumps(settings, sort_keys=True)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _save(folder: Path, key: str, records: list[TokenizedRecord], lines: list[str], report: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lengths = [[len(r.prompt_ids)] + [len(c) for c in r.completion_ids] for r in records]
    ids = [t for r in records for seq in (r.prompt_ids, *r.completion_ids) for t in seq]
    tensors = {"ids": torch.tensor(ids, dtype=torch.int64), "lengths": torch.tensor(lengths, dtype=torch.int64),
               "weights": torch.tensor([r.weight for r in records], dtype=torch.float64)}
    if records and records[0].labels is not None:
        tensors["labels"] = torch.tensor([r.labels for r in records], dtype=torch.float64)
    if any(r.tie for r in records):
        tensors["ties"] = torch.tensor([r.tie for r in records], dtype=torch.bool)
    (folder / f"{key}.json").write_text(json.dumps({"sources": [r.source for r in records], "lines": lines}))
    shutil.copyfile(report, folder / f"{key}.report.json")
    tmp = folder / f"{key}.safetensors.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / f"{key}.safetensors")


def _load(folder: Path, key: str) -> tuple[list[TokenizedRecord], list[str]] | None:
    if not (folder / f"{key}.safetensors").is_file():
        return None
    data = load_file(str(folder / f"{key}.safetensors"))
    meta = json.loads((folder / f"{key}.json").read_text())
    ids, weights = data["ids"].tolist(), data["weights"].tolist()
    labels = data["labels"].tolist() if "labels" in data else [None] * len(weights)
    ties = data["ties"].tolist() if "ties" in data else [False] * len(weights)
    records, pos = [], 0
    for lengths, source, weight, label, tie in zip(data["lengths"].tolist(), meta["sources"], weights, labels, ties):
        seqs = []
        for n in lengths:
            seqs.append(ids[pos:pos + n])
            pos += n
        records.append(TokenizedRecord(seqs[0], seqs[1:], source, label, weight, tie))
    return records, meta["lines"]


def load_tokenized(path: str | Path, kind: str, tokenizer, options, max_length: int, max_prompt_length: int,
                   report_path: Path, cache_dir: Path | None) -> tuple[list[TokenizedRecord], list[str], bool]:
    """(tokenized records, summary lines, whether they came from the cache); the full report,
    with every dropped or altered record, is written to ``report_path``."""
    path = Path(path)
    key = cache_key(path, kind, tokenizer, options, max_length, max_prompt_length) \
        if cache_dir is not None and path.exists() else None
    if key is not None and (hit := _load(cache_dir, key)) is not None:
        shutil.copyfile(cache_dir / f"{key}.report.json", report_path)
        return hit[0], hit[1] + [f"tokenized data from the cache ({cache_dir / key}.*)"], True
    report = DataReport()
    records = iter_records(path, kind, options, report, special_tokens=tokenizer.all_special_tokens)
    tokenized, tok_report = tokenize_records(records, tokenizer, max_length, max_prompt_length)
    for source, action, reason in tok_report.events:
        report.event(action, source, f"tokenization: {reason}")
    report.write_json(report_path, {"tokenization": {
        "records_in": tok_report.records_in, "records_out": tok_report.records_out,
        "prompts_truncated": tok_report.prompts_truncated, "completions_truncated": tok_report.completions_truncated,
        "dropped": dict(tok_report.dropped)}})
    lines = report.lines() + tok_report.lines()[:1]  # its drops are in the report's lines already
    if not report.records_out:
        raise UserError(f"no records{' left: see ' + str(report_path) if report.counts else ''}", where=str(path))
    if key is not None and tokenized:
        _save(cache_dir, key, tokenized, lines, report_path)
    return tokenized, lines, False
