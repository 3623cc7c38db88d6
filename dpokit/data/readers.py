"""Read JSON / JSONL files into typed records, with errors that name file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from dpokit.data.records import Messages, Pair, RankedList, Record, SFTExample, Text, Unpaired
from dpokit.errors import UserError


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def iter_json_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (``file:line`` or ``file:record N``, object) for a JSONL file or a JSON array."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", where=str(path))
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read: {exc}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text (byte {exc.start})", where=str(path)) from None
    if not text.strip():
        raise UserError("file is empty", where=str(path))
    decode = json.JSONDecoder(parse_constant=_reject_constant)
    jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))  # a JSONL line that is a list is a bad line
    if path.name.endswith((".json", ".json.gz")) or (not jsonl and text.lstrip().startswith("[")):
        try:
            items = decode.decode(text)
        except ValueError as exc:
            line = getattr(exc, "lineno", None)
            raise UserError(f"invalid JSON: {getattr(exc, 'msg', exc)}",
                            where=f"{path}:{line}" if line else str(path)) from None
        if not isinstance(items, list):
            raise UserError("expected a JSON array of records", where=str(path))
        for i, obj in enumerate(items, 1):
            yield _check_object(obj, f"{path}:record {i}")
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                obj = decode.decode(line)
            except (ValueError, RecursionError) as exc:
                raise UserError(f"invalid JSON: {getattr(exc, 'msg', exc)}", where=f"{path}:{lineno}") from None
            yield _check_object(obj, f"{path}:{lineno}")


def _check_object(obj: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}", where=where)
    return where, obj


def text_field(obj: dict, key: str, where: str) -> Text:
    """A field that is a string or a non-empty list of chat messages."""
    if key not in obj:
        raise UserError("missing", where, key)
    value = obj[key]
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and {"role", "content"} <= value.keys():
        value = [value]  # a single message
    if isinstance(value, list) and value:
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                    or not isinstance(msg.get("content"), str):
                raise UserError("each message must be an object with string 'role' and 'content'",
                                where, f"{key}[{i}]")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"must be a string or a non-empty list of messages; got {type(value).__name__}", where, key)


def _split_common_prefix(a: Text, b: Text, where: str) -> tuple[Text, Text, Text]:
    """Implicit prompt: the shared beginning of two transcripts, and what follows in each.

    Messages split at the first differing message. Text splits at the last whitespace
    before the first difference, and the whitespace stays with the completions, so the
    completions start at a word boundary as a tokenizer expects.
    """
    if isinstance(a, list) and isinstance(b, list):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n == 0 or n == len(a) or n == len(b):
            raise UserError("chosen and rejected share no prompt messages, or one is a prefix of the "
                            "other; give an explicit 'prompt'", where, "chosen")
        return a[:n], a[n:], b[n:]
    if isinstance(a, str) and isinstance(b, str):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        while n > 0 and not a[n - 1].isspace():
            n -= 1
        while n > 0 and a[n - 1].isspace():
            n -= 1  # keep the separating whitespace with the completions
        if n == 0:
            raise UserError("chosen and rejected share no prefix; give an explicit 'prompt'", where, "chosen")
        return a[:n], a[n:], b[n:]
    raise UserError("chosen and rejected must both be strings or both message lists", where, "rejected")


def _as_messages(value: Text, role: str) -> Messages:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _align(prompt: Text, completions: list[Text]) -> tuple[Text, list[Text]]:
    """If any part is chat, make all parts chat (a bare string becomes one message)."""
    if isinstance(prompt, str) and all(isinstance(c, str) for c in completions):
        return prompt, completions
    return _as_messages(prompt, "user"), [_as_messages(c, "assistant") for c in completions]


def parse_pair(obj: dict[str, Any], where: str) -> Pair:
    chosen, rejected = text_field(obj, "chosen", where), text_field(obj, "rejected", where)
    if "prompt" in obj:
        prompt = text_field(obj, "prompt", where)
    else:
        prompt, chosen, rejected = _split_common_prefix(chosen, rejected, where)
    prompt, (chosen, rejected) = _align(prompt, [chosen, rejected])
    return Pair(prompt, chosen, rejected, where)


def parse_sft(obj: dict[str, Any], where: str) -> SFTExample:
    """``prompt``+``completion``, a ``messages`` conversation (the last turn is the target),
    or a preference pair (its chosen answer is the target)."""
    if "chosen" in obj:
        pair = parse_pair(obj, where)
        return SFTExample(pair.prompt, pair.chosen, where)
    if "messages" in obj:
        msgs = text_field(obj, "messages", where)
        if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise UserError("must be a list of messages ending with an assistant turn", where, "messages")
        return SFTExample(msgs[:-1], msgs[-1:], where)
    prompt, completion = text_field(obj, "prompt", where), text_field(obj, "completion", where)
    prompt, (completion,) = _align(prompt, [completion])
    return SFTExample(prompt, completion, where)


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise UserError(f"must be a finite number; got {value!r}", where, key)
    return float(value)


def parse_list(obj: dict[str, Any], where: str) -> RankedList:
    """``prompt`` with ``completions`` best first (optional ``scores``), or ``responses`` with
    ``scores`` (ordered here by score, highest first; equal scores keep file order)."""
    key = "completions" if "completions" in obj else "responses"
    answers = obj.get(key)
    if not isinstance(answers, list) or len(answers) < 2:
        raise UserError("must be a list of at least 2 answers", where, key)
    texts = [text_field({key: a}, key, where) for a in answers]
    scores = None
    if "scores" in obj:
        raw = obj["scores"]
        if not isinstance(raw, list) or len(raw) != len(texts):
            raise UserError(f"must be a list of {len(texts)} numbers, one per answer", where, "scores")
        scores = [_number(v, where, f"scores[{i}]") for i, v in enumerate(raw)]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        texts, scores = [texts[i] for i in order], [scores[i] for i in order]
    elif key == "responses":
        raise UserError("missing: 'responses' needs 'scores' to be ordered (or use 'completions', best first)",
                        where, "scores")
    prompt, texts = _align(text_field(obj, "prompt", where), texts)
    return RankedList(prompt, texts, where, scores)


def parse_unpaired(obj: dict[str, Any], where: str) -> Unpaired:
    """``prompt``, ``completion`` and a boolean ``label`` (true: desirable)."""
    label = obj.get("label")
    if not isinstance(label, bool):
        raise UserError(f"must be true or false; got {label!r}", where, "label")
    prompt, completion = text_field(obj, "prompt", where), text_field(obj, "completion", where)
    prompt, (completion,) = _align(prompt, [completion])
    return Unpaired(prompt, completion, label, where)


def _records(obj: dict[str, Any], where: str, kind: str) -> list[Record]:
    if kind == "pair":
        return [parse_pair(obj, where)]
    if kind == "sft":
        return [parse_sft(obj, where)]
    if kind == "list":
        if "chosen" in obj:  # a pair is a list of two
            pair = parse_pair(obj, where)
            return [RankedList(pair.prompt, pair.completions, where)]
        return [parse_list(obj, where)]
    if kind == "unpaired":
        if "chosen" in obj:  # a pair gives one desirable and one undesirable example
            pair = parse_pair(obj, where)
            return [Unpaired(pair.prompt, pair.chosen, True, where), Unpaired(pair.prompt, pair.rejected, False, where)]
        return [parse_unpaired(obj, where)]
    raise ValueError(f"unknown record kind {kind!r}")


def read_records(path: str | Path, kind: str) -> list[Record]:
    """All records of a file as ``kind`` ('pair', 'list', 'unpaired' or 'sft')."""
    records = [rec for where, obj in iter_json_objects(path) for rec in _records(obj, where, kind)]
    if not records:
        raise UserError("no records", where=str(path))
    return records
