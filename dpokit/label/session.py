"""One annotator's judgements, kept in the ``--out`` file so that a kill at any moment loses none.

The file is the state: one votes record per judged candidate, nothing else, so the data pipeline
reads it as it is. A judgement is one line appended with a single ``write`` and flushed to disk
(``fsync``) before the page is told it is saved; an undo rewrites the file without its last line
under a temporary name and renames it into place (``write_text_atomic``), so the file is either
the old one or the new one. A kill during an append can leave only a line without its newline,
one never confirmed to the page: the next start removes it and says so. A ``.lock`` file beside
the output (``flock``) keeps a second server off the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from dpokit.data.fields import JSON
from dpokit.data.formats import VOTE_WORDS
from dpokit.errors import UserError
from dpokit.label.candidates import Candidate
from dpokit.store.atomic import fsync_path, io_reason, write_text_atomic

CHOICES = {"tie": "tie", "both bad": "tie (bothbad)"}
"""A choice that is not a side -> the vote written (the votes format reads both as a tie)."""


def swapped(seed: int, cid: str) -> bool:
    """Whether the page shows the candidate's second answer as A: a coin per (seed, candidate),
    the same after a restart."""
    return hashlib.sha256(f"{seed}:{cid}".encode()).digest()[0] & 1 == 1


def vote_for(choice: str, swap: bool) -> str:
    """The vote of a choice on the page (A, B, tie, both bad) for the file's order of answers."""
    if choice in CHOICES:
        return CHOICES[choice]
    if choice not in ("A", "B"):
        raise ValueError(f"unknown choice {choice!r}")
    return "a" if (choice == "A") != swap else "b"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session:
    """The candidates, the judgements made so far (read back from ``out``) and the next one."""

    def __init__(self, candidates: list[Candidate], out: str | Path, annotator: str, seed: int = 0, log=print):
        self.candidates, self.out, self.annotator, self.seed = candidates, Path(out), annotator, seed
        if self.out.name.endswith(".gz"):
            raise UserError("judgements are appended line by line: name a plain .jsonl file", where=str(out))
        self.by_id = {c.id: c for c in candidates}
        self.lock = threading.Lock()  # requests arrive on several threads
        self._lock_file = _hold_lock(self.out)
        self.lines: list[str] = []  # the file's lines, in order
        self.judged: list[str] = []  # candidate ids, in the same order
        self.done: set[str] = set()
        try:
            self._read_back(log)
        except BaseException:  # a refused file: let go of the lock (the caller may try again in-process)
            self.close()
            raise

    def _read_back(self, log) -> None:
        if not self.out.exists():
            return
        try:
            data = self.out.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read: {io_reason(exc)}", where=str(self.out)) from None
        if data and not data.endswith(b"\n"):  # an append cut short: never confirmed, so not a judgement
            keep = data.rfind(b"\n") + 1
            with open(self.out, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            log(f"{self.out}: removed an incomplete last line (a judgement interrupted before it was saved)")
            data = data[:keep]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"not UTF-8 text (byte {exc.start})", where=str(self.out)) from None
        for number, raw in enumerate(text.split("\n")[:-1], 1):
            self._check_line(raw, f"{self.out}:{number}")
            self.lines.append(raw)

    def _check_line(self, raw: str, where: str) -> None:
        try:
            row = JSON.decode(raw)
        except ValueError as exc:
            raise UserError(f"not a JSON object: {exc}", where) from None
        cid = row.get("id") if isinstance(row, dict) else None
        if cid not in self.by_id:
            raise UserError("no candidate with this id in the candidates file (is --out from another file?)",
                            where, "id")
        if cid in self.done:
            raise UserError("a second judgement of the same candidate", where, "id")
        votes = row.get("votes")
        if not (isinstance(votes, list) and len(votes) == 1 and str(votes[0]).lower() in VOTE_WORDS):
            raise UserError("must be a list of one vote (a, b, tie, tie (bothbad))", where, "votes")
        self.judged.append(cid)
        self.done.add(cid)

    # ------------------------------------------------------------------ the state the page shows

    def current(self) -> Candidate | None:
        """The first candidate without a judgement."""
        return next((c for c in self.candidates if c.id not in self.done), None)

    def state(self) -> dict:
        cand = self.current()
        shown = None
        if cand is not None:
            a, b = (cand.second, cand.first) if swapped(self.seed, cand.id) else (cand.first, cand.second)
            shown = {"id": cand.id, "source": cand.source, "prompt": turns(cand.prompt, "user"),
                     "a": turns(a, "assistant"), "b": turns(b, "assistant")}
        return {"done": len(self.judged), "total": len(self.candidates), "annotator": self.annotator,
                "out": str(self.out), "candidate": shown, "last": self.judged[-1] if self.judged else None}

    # ------------------------------------------------------------------ changes

    def judge(self, cid: str, choice: str) -> bool:
        """Record ``choice`` for candidate ``cid``, durably; False (nothing written) unless ``cid``
        is the current candidate (a second click, or a page showing an old state)."""
        with self.lock:
            cand = self.current()
            if cand is None or cand.id != cid:
                return False
            swap = swapped(self.seed, cid)
            row = {"id": cid, "source": cand.source, "prompt": cand.prompt, "response_a": cand.first,
                   "response_b": cand.second, "votes": [vote_for(choice, swap)], "shown": "ba" if swap else "ab",
                   "annotator": self.annotator, "time": now()}
            line = json.dumps(row, ensure_ascii=False)
            self._append(line)
            self.lines.append(line)
            self.judged.append(cid)
            self.done.add(cid)
            return True

    def undo(self, cid: str) -> bool:
        """Remove the last judgement if it is of ``cid`` (so a repeated undo removes one only)."""
        with self.lock:
            if not self.judged or self.judged[-1] != cid:
                return False
            rest = self.lines[:-1]
            write_text_atomic(self.out, "".join(line + "\n" for line in rest))
            self.lines, self.judged = rest, self.judged[:-1]
            self.done.discard(cid)
            return True

    def _append(self, line: str) -> None:
        created = not self.out.exists()
        data = (line + "\n").encode("utf-8")
        try:
            fd = os.open(self.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                if written != len(data):  # a short write (disk full): undo it, so no partial line stays
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                    raise OSError(28, "short write (disk full?)")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_path(self.out.parent)  # the new file's name is durable too
        except OSError as exc:
            raise UserError(f"could not save the judgement: {io_reason(exc)}", where=str(self.out)) from None

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _hold_lock(out: Path):
    """An exclusive ``flock`` on ``OUT.lock`` for the session's life (released by the OS on a kill)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run without the guard
        return None
    if not out.parent.is_dir():
        raise UserError("the output folder does not exist", where=str(out.parent))
    f = open(out.with_name(out.name + ".lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError("another dpokit label is writing this file; stop it first", where=str(out)) from None
    return f


def turns(text, role: str) -> list[dict]:
    """Text or messages as a list of ``{"role", "text"}`` for the page (which shows them as text)."""
    if isinstance(text, str):
        return [{"role": role, "text": text}]
    return [{"role": m.get("role", role), "text": m.get("content", "")} for m in text]

