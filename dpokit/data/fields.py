"""Reading one field of a raw record: text or chat messages, numbers, booleans, lists.

Every error names the record (``file:line``) and the field, so a user can find and fix it.
Messages come out as ``{"role", "content"}`` with string content: ShareGPT's ``from``/``value``
and typed content parts (``[{"type": "text", "text": ...}]``) are normalised here, at read time.
"""

from __future__ import annotations

import json
from typing import Any

from dpokit.data.records import Messages, Text
from dpokit.errors import UserError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
         "chatgpt": "assistant", "model": "assistant", "system": "system"}
"""ShareGPT speaker names -> chat roles (other names pass through unchanged)."""

TRUE = {"true", "1", "yes", "up", "good", "desirable", "thumbs_up"}
FALSE = {"false", "0", "no", "down", "bad", "undesirable", "thumbs_down"}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


JSON = json.JSONDecoder(parse_constant=_reject_constant)
"""Strict JSON: NaN and Infinity literals are errors, not floats."""


def present(obj: dict, key: str) -> bool:
    return obj.get(key) is not None


def require(obj: dict, key: str, where: str) -> Any:
    if obj.get(key) is None:  # absent, JSON null, Parquet null or a CSV row too short
        raise UserError("missing", where, key)
    return obj[key]


def content_text(content: Any, where: str, key: str) -> str:
    """A message's content: a string, or typed parts whose text parts are joined by newlines.
    ``key`` names the message (``chosen[0]``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type", "text") == "text":
                part = part.get("text", part.get("value"))
            if not isinstance(part, str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise UserError(f"content part of type {kind!r}: only text is supported", where,
                                f"{key}.content[{i}]")
            texts.append(part)
        return "\n".join(texts)
    raise UserError("each message must be an object with string 'role' and 'content' (or text parts)", where, key)


def message(msg: Any, where: str, key: str) -> dict[str, str]:
    """``{"role", "content"}`` or ShareGPT ``{"from", "value"}`` -> ``{"role", "content"}``."""
    if isinstance(msg, dict) and isinstance(msg.get("role"), str):
        return {"role": msg["role"], "content": content_text(msg.get("content"), where, key)}
    if isinstance(msg, dict) and isinstance(msg.get("from"), str):
        return {"role": ROLES.get(msg["from"].lower(), msg["from"]),
                "content": content_text(msg.get("value"), where, key)}
    raise UserError("each message must be an object with string 'role' and 'content'", where, key)


def text_value(value: Any, where: str, key: str) -> Text:
    """A string, one message, or a non-empty list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and ("role" in value or "from" in value):
        value = [value]  # a single message
    if isinstance(value, list) and value:
        return [message(m, where, f"{key}[{i}]") for i, m in enumerate(value)]
    raise UserError(f"must be a string or a non-empty list of messages; got {type(value).__name__}", where, key)


def text_field(obj: dict, key: str, where: str) -> Text:
    """A field that is a string or a non-empty list of chat messages."""
    return text_value(require(obj, key, where), where, key)


def list_field(obj: dict, key: str, where: str, min_len: int = 0) -> list:
    """A list; a string holding a JSON list (a CSV cell) is decoded."""
    value = require(obj, key, where)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = JSON.decode(value)
        except ValueError as exc:
            raise UserError(f"not a valid JSON list: {exc}", where, key) from None
        except RecursionError:
            raise UserError("not a valid JSON list: nested too deeply", where, key) from None
    if not isinstance(value, list):
        raise UserError(f"must be a list; got {type(value).__name__}", where, key)
    if len(value) < min_len:
        raise UserError(f"must be a list of at least {min_len} items; got {len(value)}", where, key)
    return value


def number(value: Any, where: str, key: str) -> float:
    """A finite number; numeric strings (CSV cells) are accepted, NaN and infinities are not."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"must be a number; got {value!r}", where, key) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise UserError(f"must be a finite number; got {value!r}", where, key)
    return float(value)


def boolean(value: Any, where: str, key: str) -> bool:
    """true/false, 1/0, or words such as yes/no, up/down, good/bad (case-insensitive)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise UserError(f"must be true or false; got {value!r}", where, key)


def as_messages(value: Text, role: str) -> Messages:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def align(prompt: Text, completions: list[Text]) -> tuple[Text, list[Text]]:
    """If any part is chat, make all parts chat (a bare string becomes one message)."""
    if isinstance(prompt, str) and all(isinstance(c, str) for c in completions):
        return prompt, completions
    return as_messages(prompt, "user"), [as_messages(c, "assistant") for c in completions]


def split_common_prefix(a: Text, b: Text, where: str) -> tuple[Text, Text, Text]:
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


COLUMN_NAMES = ("prompt", "chosen", "rejected", "completion", "completions", "responses", "scores", "ranking",
                "ranks", "label", "messages", "conversations", "system", "response_a", "response_b", "votes",
                "winner", "query", "items", "clicks", "dwell", "weight", "response", "score")
"""Field names a column mapping may target (``response`` and ``score`` name the keys inside
each answer object of rated completions)."""


def parse_columns(spec: str) -> dict[str, str]:
    """``"prompt=instruction,chosen=output_a"`` -> ``{"prompt": "instruction", "chosen": "output_a"}``."""
    mapping: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not name or not column:
            raise UserError(f"expected name=column, got {item!r}", where="config", field="data.columns")
        if name not in COLUMN_NAMES:
            raise UserError(f"unknown field {name!r} (known: {', '.join(COLUMN_NAMES)})", where="config",
                            field="data.columns")
        mapping[name] = column
    return mapping


VOTE_CHOICES = ("a", "b", "tie")


def parse_vote_codes(spec: str) -> dict[str, str]:
    """``"1=a,2=b,0=tie"`` -> ``{"1": "a", "2": "b", "0": "tie"}``."""
    codes: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        code, sep, choice = (s.strip() for s in item.partition("="))
        if not sep or not code or choice not in VOTE_CHOICES:
            raise UserError(f"expected CODE=a|b|tie, got {item!r}", where="config", field="data.vote_codes")
        codes[code] = choice
    return codes


def lookup(obj: dict, path: str) -> Any:
    """``obj[path]``, or a dotted path into nested objects (``input.messages``); None when absent."""
    if path in obj:
        return obj[path]
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def rename(obj: dict, mapping: dict[str, str], where: str) -> dict:
    """The record with each mapped column moved to its canonical name."""
    if not mapping:
        return obj
    out = dict(obj)
    for name, column in mapping.items():
        if name in ("response", "score"):
            continue  # keys inside answer objects: the rated format reads them
        value = joined(obj, name, column, where) if "+" in column else lookup(obj, column)
        if value is None:
            raise UserError(f"missing column {column!r} (mapped to {name!r} by data.columns)", where, column)
        for part in column.split("+"):
            out.pop(part, None)
        out[name] = value
    return out


def joined(obj: dict, name: str, columns: str, where: str) -> Any:
    """Several columns as one field (``a+b``): ``votes`` gathers the annotators' columns into a list
    (an empty or missing one is an annotator who did not vote); a text field joins the non-empty
    texts by a blank line (Alpaca's ``instruction+input``). None when every column is empty."""
    values = [lookup(obj, c) for c in columns.split("+")]
    given = [v for v in values if v is not None and v != ""]
    if not given:
        return None
    if name == "votes":
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in given]
    for column, value in zip(columns.split("+"), values):
        if value is not None and not isinstance(value, str):
            raise UserError(f"must be text to join into {name!r}; got {type(value).__name__}", where, column)
    return "\n\n".join(given)
