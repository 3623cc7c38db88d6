"""Input formats: one parser each, from a raw record (a dict) to typed records.

A file's format is told from its first record's fields (``detect``) unless the user names it
(``data.format``). Each parser returns a list: most formats give one record per input record,
click logs and votes may give none or several; what a parser leaves out it reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from dpokit.data.fields import (align, as_messages, boolean, list_field, number, parse_vote_codes, present, require,
                                split_common_prefix, text_field, text_value)
from dpokit.data.records import Pair, RankedList, Record, SFTExample, Text, Unpaired
from dpokit.data.report import DataReport
from dpokit.errors import UserError


@dataclass
class Context:
    """What parsers need besides the record: the options and the report."""

    options: Any
    """A ``DataConfig`` (votes, ties, click settings, column mapping)."""
    report: DataReport | None = None
    columns: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- pairs and SFT

PAIR_ALIASES = {"chosen_messages": "chosen", "rejected_messages": "rejected"}
"""Whole conversations under these names (LLaMA-Factory's message format) read as chosen/rejected."""


def parse_pair(obj: dict[str, Any], where: str) -> Pair:
    """``chosen``/``rejected`` (strings or messages) with an optional ``prompt``; without one the
    prompt is the shared beginning of the two (see ``split_common_prefix``)."""
    for alias, name in PAIR_ALIASES.items():
        if not present(obj, name) and present(obj, alias):
            obj = {**obj, name: obj[alias]}
    chosen, rejected = text_field(obj, "chosen", where), text_field(obj, "rejected", where)
    if present(obj, "prompt"):
        prompt = text_field(obj, "prompt", where)
    else:
        prompt, chosen, rejected = split_common_prefix(chosen, rejected, where)
    prompt, (chosen, rejected) = align(prompt, [chosen, rejected])
    tie = boolean(obj["tie"], where, "tie") if present(obj, "tie") else False
    return Pair(prompt, chosen, rejected, where, tie=tie)


def _conversation(msgs: Text, where: str, key: str) -> tuple[Text, Text]:
    """(prompt, last turn) of a conversation that ends with the assistant's answer."""
    if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1]["role"] != "assistant":
        raise UserError("must be a list of messages ending with an assistant turn", where, key)
    return msgs[:-1], msgs[-1:]


def parse_sft(obj: dict[str, Any], where: str) -> SFTExample:
    """``prompt``+``completion``, a ``messages`` conversation (the last turn is the target),
    or a preference pair (its chosen answer is the target)."""
    if present(obj, "chosen"):
        pair = parse_pair(obj, where)
        return SFTExample(pair.prompt, pair.chosen, where)
    if present(obj, "messages"):
        return SFTExample(*_conversation(text_field(obj, "messages", where), where, "messages"), where)
    prompt, completion = text_field(obj, "prompt", where), text_field(obj, "completion", where)
    prompt, (completion,) = align(prompt, [completion])
    return SFTExample(prompt, completion, where)


def parse_unpaired(obj: dict[str, Any], where: str) -> Unpaired:
    """``prompt``, ``completion`` and a ``label`` (true: desirable), or ``messages`` + ``label``."""
    label = boolean(require(obj, "label", where), where, "label")
    if present(obj, "messages") and not present(obj, "completion"):
        prompt, completion = _conversation(text_field(obj, "messages", where), where, "messages")
    else:
        prompt, completion = text_field(obj, "prompt", where), text_field(obj, "completion", where)
        prompt, (completion,) = align(prompt, [completion])
    return Unpaired(prompt, completion, label, where)


# --------------------------------------------------------------------------- chat transcripts

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_DIVERGED = "hh: the two transcripts differ before the last assistant turn; each answer is the rest of its transcript"


def _hh_turns(text: Any, where: str, key: str) -> tuple[str, list[tuple[str, str, int]]]:
    """The transcript (starting with its first marker) and (role, content, offset of the content)
    of each ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` turn."""
    if not isinstance(text, str):
        raise UserError(f"must be an HH transcript string; got {type(text).__name__}", where, key)
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    marks = list(HH_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise UserError("not an HH transcript: it must start with a '\\n\\nHuman:' turn", where, key)
    if marks[-1].group(1) != "Assistant":
        raise UserError("the transcript must end with an '\\n\\nAssistant:' turn", where, key)
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return text, [("user" if m.group(1) == "Human" else "assistant", text[m.end():end].strip(), m.end())
                  for m, end in zip(marks, ends)]


def parse_hh(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """Anthropic HH: two whole transcripts; the shared turns are the prompt, the last assistant
    turns the answers. Where the two differ earlier, the prompt ends at the last shared Human
    turn and each answer is the rest of its transcript, verbatim (reported as altered)."""
    (c_text, c), (r_text, r) = (_hh_turns(require(obj, k, where), where, k) for k in ("chosen", "rejected"))
    msgs_c, msgs_r = ([{"role": role, "content": content} for role, content, _ in t] for t in (c, r))
    if msgs_c[:-1] == msgs_r[:-1]:
        return [Pair(msgs_c[:-1], msgs_c[-1:], msgs_r[-1:], where)]
    shared = 0
    while shared < min(len(c), len(r)) and msgs_c[shared] == msgs_r[shared]:
        shared += 1
    while shared and msgs_c[shared - 1]["role"] != "user":
        shared -= 1
    if not shared:
        raise UserError("the transcripts share no Human turn", where, "rejected")
    ctx.report.alter(where, HH_DIVERGED)
    answers = [[{"role": "assistant", "content": text[turns[shared][2]:].strip()}]
               for text, turns in ((c_text, c), (r_text, r))]
    return [Pair(msgs_c[:shared], *answers, where)]


def parse_sharegpt(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """``conversations`` of ``from``/``value`` turns (optional top-level ``system``) with
    ``chosen``/``rejected`` answers; without them, an SFT conversation ending with the answer."""
    conv = text_value(list_field(obj, "conversations", where, 1), where, "conversations")
    if present(obj, "system"):
        conv = [{"role": "system", "content": text_field(obj, "system", where)}] + conv
    if present(obj, "chosen") or present(obj, "rejected"):
        chosen, rejected = (as_messages(text_field(obj, k, where), "assistant") for k in ("chosen", "rejected"))
        return [Pair(conv, chosen, rejected, where)]
    return [SFTExample(*_conversation(conv, where, "conversations"), where)]


def parse_together(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """``input.messages``, ``preferred_output`` and ``non_preferred_output`` (message lists)."""
    inp = obj.get("input")
    prompt = text_value(inp.get("messages") if isinstance(inp, dict) else None, where, "input.messages")
    if not isinstance(prompt, list):
        raise UserError("must be a list of messages", where, "input.messages")
    chosen, rejected = (as_messages(text_field(obj, k, where), "assistant")
                        for k in ("preferred_output", "non_preferred_output"))
    return [Pair(prompt, chosen, rejected, where)]


# --------------------------------------------------------------------------- several answers

TEXT_KEYS = ("response", "text", "completion", "content")
SCORE_KEYS = ("score", "overall_score", "rating")


def _answer_key(item: dict, ctx: Context, name: str, candidates: tuple[str, ...]) -> str | None:
    if name in ctx.columns:
        return ctx.columns[name]
    return next((k for k in candidates if k in item), None)


def _scored_answers(obj: dict, ctx: Context, where: str) -> tuple[list[Text], list[float]]:
    key = "completions" if present(obj, "completions") else "responses"
    answers = list_field(obj, key, where, 2)
    if present(obj, "scores"):
        raw = list_field(obj, "scores", where)
        if len(raw) != len(answers):
            raise UserError(f"must be a list of {len(answers)} numbers, one per answer", where, "scores")
        texts = [text_value(a, where, f"{key}[{i}]") for i, a in enumerate(answers)]
        return texts, [number(v, where, f"scores[{i}]") for i, v in enumerate(raw)]
    texts, scores = [], []
    for i, item in enumerate(answers):  # UltraFeedback style: answer objects with their score
        if not isinstance(item, dict):
            raise UserError("needs 'scores', or answers that are objects with a score", where, f"{key}[{i}]")
        text_key, score_key = _answer_key(item, ctx, "response", TEXT_KEYS), _answer_key(item, ctx, "score", SCORE_KEYS)
        if text_key is None or score_key is None:
            raise UserError(f"an answer object needs a text ({'/'.join(TEXT_KEYS)}) and a score "
                            f"({'/'.join(SCORE_KEYS)}); map others with data.columns", where, f"{key}[{i}]")
        texts.append(text_value(require(item, text_key, where), where, f"{key}[{i}].{text_key}"))
        scores.append(number(require(item, score_key, where), where, f"{key}[{i}].{score_key}"))
    return texts, scores


def parse_rated(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """A ``prompt`` with k scored answers, ordered here best first (equal scores keep file order)."""
    prompt = text_field(obj, "prompt", where)
    texts, scores = _scored_answers(obj, ctx, where)
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    prompt, texts = align(prompt, [texts[i] for i in order])
    return [RankedList(prompt, texts, where, [scores[i] for i in order])]


def parse_ranking(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """A ``prompt`` with answers best first, under ``ranking`` or ``completions``."""
    key = next((k for k in ("ranking", "completions") if present(obj, k)), None)
    if key is None:
        field_name = "scores" if present(obj, "responses") else "ranking"
        raise UserError("missing: give 'ranking' or 'completions' (best first), or 'responses' with 'scores'",
                        where, field_name)
    prompt = text_field(obj, "prompt", where)
    texts = [text_value(a, where, f"{key}[{i}]") for i, a in enumerate(list_field(obj, key, where, 2))]
    prompt, texts = align(prompt, texts)
    return [RankedList(prompt, texts, where)]


def parse_list(obj: dict[str, Any], where: str) -> RankedList:
    """A rated or ranked record as one list (best first)."""
    ctx = Context(None)  # the rated and ranking parsers need no options and report nothing
    parse = parse_rated if _has_scores(obj) else parse_ranking
    return parse(obj, ctx, where)[0]


VOTE_WORDS = {"a": "a", "model_a": "a", "b": "b", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie",
              "both_bad": "tie", "both_good": "tie", "equal": "tie"}


def _aggregate(votes: list[str], rule: str) -> str | None:
    """'a', 'b', 'tie', or None when the rule finds no answer (unanimity not reached)."""
    counts = [votes.count(c) for c in ("a", "b", "tie")]
    if rule == "unanimous":
        return votes[0] if max(counts) == len(votes) else None
    top = max(counts)
    if counts.count(top) > 1 or counts[2] == top:  # a draw between choices, or ties have most votes
        return "tie"
    return "a" if counts[0] == top else "b"


def parse_votes(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """``prompt``, ``response_a``, ``response_b`` and ``votes`` (a list of a/b/tie, one per
    annotator) or one ``winner``; aggregated by majority or unanimity."""
    prompt = text_field(obj, "prompt", where)
    a, b = text_field(obj, "response_a", where), text_field(obj, "response_b", where)
    raw = list_field(obj, "votes", where, 1) if present(obj, "votes") else [require(obj, "winner", where)]
    votes, codes = [], parse_vote_codes(ctx.options.vote_codes)
    for i, v in enumerate(raw):
        if codes:
            v = codes.get(str(v).strip(), v)
        if not isinstance(v, str) or v.strip().lower() not in VOTE_WORDS:
            known = f"a code of data.vote_codes ({', '.join(codes)})" if codes else "a, b, tie (or model_a, model_b)"
            raise UserError(f"must be {known}; got {v!r}", where,
                            f"votes[{i}]" if present(obj, "votes") else "winner")
        votes.append(VOTE_WORDS[v.strip().lower()])
    ctx.report.agreement.add(votes)
    outcome = _aggregate(votes, ctx.options.votes)
    prompt, (a, b) = align(prompt, [a, b])
    if outcome is None:
        ctx.report.drop(where, "votes: annotators disagree (data.votes=unanimous)")
        return []
    if outcome == "tie":
        if ctx.options.ties == "drop":
            ctx.report.drop(where, "votes: a tie (data.ties=drop)")
            return []
        return [Pair(prompt, a, b, where, tie=True)]
    return [Pair(prompt, a, b, where) if outcome == "a" else Pair(prompt, b, a, where)]


# --------------------------------------------------------------------------- interaction logs

def _clicked(obj: dict, n_items: int, where: str) -> set[int]:
    """Clicked positions: ``clicks`` as 0-based indices, or as one true/false flag per item."""
    clicks = list_field(obj, "clicks", where)
    if clicks and all(isinstance(c, bool) for c in clicks):
        if len(clicks) != n_items:
            raise UserError(f"{len(clicks)} flags for {n_items} items", where, "clicks")
        return {i for i, c in enumerate(clicks) if c}
    out = set()
    for i, c in enumerate(clicks):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_items:
            raise UserError(f"must be an item index 0..{n_items - 1} (or a true/false flag per item); got {c!r}",
                            where, f"clicks[{i}]")
        out.add(c)
    return out


def parse_clicks(obj: dict[str, Any], ctx: Context, where: str) -> list[Record]:
    """Skip-above pairs (Joachims 2002): a clicked item is preferred over every unclicked item
    shown above it. A click with ``dwell`` (seconds) under ``click_min_dwell`` counts as no
    click. With ``click_bias`` = η > 0 a pair is weighted by the inverse examination propensity
    of its clicked position k (1-based) under the power-law model P(examined | k) = (1/k)^η."""
    key = next((k for k in ("query", "context", "prompt") if present(obj, k)), "query")
    query = text_field(obj, key, where)
    items = [text_value(x, where, f"items[{i}]") for i, x in enumerate(list_field(obj, "items", where, 1))]
    clicked = _clicked(obj, len(items), where)
    opts = ctx.options
    if present(obj, "dwell") and opts.click_min_dwell > 0:
        dwell = list_field(obj, "dwell", where)
        if len(dwell) != len(items):
            raise UserError(f"must give one dwell time per item ({len(items)})", where, "dwell")
        short = {i for i in clicked
                 if dwell[i] is None or number(dwell[i], where, f"dwell[{i}]") < opts.click_min_dwell}
        if short:
            ctx.report.alter(where, "clicks: clicks shorter than data.click_min_dwell count as skips")
            clicked -= short
    pairs = []
    for pos in sorted(clicked):
        weight = (pos + 1) ** opts.click_bias
        for above in range(pos):
            if above not in clicked:
                prompt, (good, bad) = align(query, [items[pos], items[above]])
                pairs.append(Pair(prompt, good, bad, where, weight))
    if not pairs:
        ctx.report.drop(where, "clicks: no clicked item below an unclicked one")
    return pairs


# --------------------------------------------------------------------------- registry and detection

Parser = Callable[[dict, Context, str], list[Record]]


def _simple(parse: Callable[[dict, str], Record]) -> Parser:
    return lambda obj, ctx, where: [parse(obj, where)]


FORMATS: dict[str, Parser] = {
    "pairs": _simple(parse_pair), "hh": parse_hh, "sharegpt": parse_sharegpt, "together": parse_together,
    "rated": parse_rated, "ranking": parse_ranking, "votes": parse_votes, "unpaired": _simple(parse_unpaired),
    "sft": _simple(parse_sft), "clicks": parse_clicks,
}


def _has_scores(obj: dict, columns: dict[str, str] | None = None) -> bool:
    answers = obj.get("completions") or obj.get("responses")
    keys = SCORE_KEYS + ((columns["score"],) if columns and "score" in columns else ())
    return present(obj, "scores") or (isinstance(answers, list) and any(
        isinstance(a, dict) and any(k in a for k in keys) for a in answers))


def _is_hh(text: Any) -> bool:
    return isinstance(text, str) and text.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in text


def detect(obj: dict, columns: dict[str, str] | None = None) -> str | None:
    """The format a record's fields point to (after ``columns`` renamed them), or None."""
    keys = {k for k, v in obj.items() if v is not None}
    if "conversations" in keys:
        return "sharegpt"
    if "preferred_output" in keys:
        return "together"
    if {"items", "clicks"} <= keys:
        return "clicks"
    if {"response_a", "response_b"} <= keys:
        return "votes"
    if {"chosen", "rejected"} <= keys or {"chosen_messages", "rejected_messages"} <= keys:
        return "hh" if "prompt" not in keys and _is_hh(obj.get("chosen")) else "pairs"
    if "label" in keys:
        return "unpaired"
    if keys & {"completions", "responses", "ranking"}:
        return "rated" if _has_scores(obj, columns) else "ranking"
    if keys & {"completion", "messages"}:
        return "sft"
    return None
