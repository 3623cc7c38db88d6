"""Writes that either complete or leave no trace, and folders that prove they are complete.

A folder is written under a hidden temporary name next to its target, every file and the
folder itself are flushed to disk, ``manifest.json`` records the size and sha256 of every
file, and only then is the folder renamed into place. ``verify`` checks a folder against
its manifest, so a truncated or altered folder is recognised before anything loads it.

A failed write (disk full, file too large, permission denied, ...) removes the partial
folder, leaves whatever was at the target untouched and raises a ``UserError`` naming the
target and the operating system's reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from dpokit.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TEST_PAUSE = "DPOKIT_TEST_WRITE_PAUSE"
"""Test hook: seconds to wait in ``atomic_folder`` after the files are written and before the
manifest, so a test can kill a run while a checkpoint is half-way written. Unset: no wait."""


def io_reason(exc: BaseException) -> str | None:
    """The operating system's reason behind a failed write, or None if ``exc`` is not an I/O error.

    Rust-backed writers (safetensors, tokenizers) report I/O errors as text ending in
    ``(os error N)``; the errno is read back from there.
    """
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    found = re.search(r"os error (\d+)", str(exc))
    return os.strerror(int(found.group(1))) if found else None


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))


def read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's file table; raises ValueError saying what is wrong with it."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"no {MANIFEST}")
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{MANIFEST} is unreadable") from None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise ValueError(f"{MANIFEST} is unreadable")
    return files


def verify(folder: Path) -> str | None:
    """None if every file listed in the manifest is present with its size and sha256, else why not."""
    try:
        files = read_manifest(folder)
    except ValueError as exc:
        return str(exc)
    for name, entry in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            return f"{MANIFEST} names a path outside the folder: {name}"
        path = folder / rel
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size} bytes, the manifest says {entry.get('size')} (truncated?)"
        if file_sha256(path) != entry.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


def folder_digest(folder: Path) -> str | None:
    """One sha256 for the whole folder, from its manifest (None without a readable manifest)."""
    try:
        files = read_manifest(folder)
    except ValueError:
        return None
    table = sorted((name, entry.get("sha256")) for name, entry in files.items())
    return hashlib.sha256(json.dumps(table).encode()).hexdigest()


def _replace_folder(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: Path, what: str) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``target`` with a manifest.

    ``what`` names the folder in the error message ("checkpoint", "model").
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if os.environ.get(TEST_PAUSE):
            time.sleep(float(os.environ[TEST_PAUSE]))
        write_manifest(tmp)
        for path in [*_files(tmp), tmp / MANIFEST, *(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
            fsync_path(path)
        _replace_folder(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = io_reason(exc)
        if reason is None:
            raise
        raise UserError(f"could not write {what} {target}: {reason} (the partial files were removed; "
                        "what was there before is intact)") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file in one step: write a temporary sibling, flush it, rename it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"could not write {path}: {io_reason(exc)}") from None


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Write JSON Lines (gzip for ``.gz``), one row at a time, in one step: a temporary sibling,
    flushed and renamed, so a failure (in ``rows`` too: a bad record) leaves no file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with opener(tmp, "wt", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise UserError(f"could not write {path}: {io_reason(exc)}") from None
        raise
