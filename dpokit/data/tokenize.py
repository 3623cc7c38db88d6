"""Records -> token ids with exact prompt/completion boundaries, truncation and a report.

Chat records are rendered with the tokenizer's chat template: the prompt with the
generation prompt (the assistant header), the full conversation without it, and the
completion is what the full rendering adds after the prompt. The prompt's tokens must be an
exact prefix of the full rendering's tokens, or the record is refused: a template that
re-renders earlier turns differently would otherwise train on the wrong tokens.

Plain-text records are used as they are: the prompt is tokenized with the tokenizer's own
special tokens (a BOS where the tokenizer adds one), each completion without, plus EOS.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from dpokit.data.records import Messages, Record, Text, Unpaired
from dpokit.errors import UserError


@dataclass
class TokenizedRecord:
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    """One list per response: (chosen, rejected) for pairs, (completion,) for SFT, k answers best
    first for lists, and (completion, mismatched completion) for unpaired records."""
    source: str
    labels: list[float] | None = None
    """Unpaired: [1.0 desirable / 0.0 undesirable]; lists: per-answer scores when known."""
    weight: float = 1.0
    tie: bool = False
    """A pair judged a tie (its answers in no particular order)."""

    @property
    def responses(self) -> int:
        return len(self.completion_ids)


@dataclass
class TokenizeReport:
    records_in: int = 0
    records_out: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(record, action, reason) of each record dropped or truncated, for the data report."""

    def drop(self, source: str, reason: str) -> None:
        self.dropped[reason] += 1
        self.events.append((source, "dropped", reason))

    def lines(self) -> list[str]:
        out = [f"{self.records_out}/{self.records_in} records kept; "
               f"{self.prompts_truncated} prompts and {self.completions_truncated} completions truncated"]
        out += [f"dropped {n}: {reason}" for reason, n in sorted(self.dropped.items())]
        return out


def _chat_texts(tokenizer, prompt: Messages, completions: list[Messages], where: str) -> list[str]:
    """The prompt rendered with the generation prompt, then each full conversation."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the record is chat messages but the tokenizer has no chat template; "
                        "give plain strings or a tokenizer with a template", where, "prompt")
    try:
        return [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)] + \
            [tokenizer.apply_chat_template(prompt + c, tokenize=False) for c in completions]
    except Exception as exc:  # template errors are jinja exceptions of many kinds
        raise UserError(f"chat template failed: {exc}", where, "prompt") from None


def _chat_completion(tokenizer, prompt_ids: list[int], full_ids: list[int], where: str) -> list[int]:
    """What the full conversation's tokens add after the prompt's, ending with EOS."""
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise UserError("the rendered prompt's tokens are not a prefix of the rendered conversation's "
                        "tokens (the chat template changes earlier turns)", where, "prompt")
    completion_ids = full_ids[len(prompt_ids):]
    eos = tokenizer.eos_token_id
    if eos in completion_ids:  # drop what the template puts after the final EOS (e.g. "\n")
        return completion_ids[: len(completion_ids) - completion_ids[::-1].index(eos)]
    return completion_ids + [eos]


def _token_ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=special)["input_ids"]``, in one batch.

    A fast tokenizer's Rust backend is called directly when it is set up exactly as that call
    would set it (no truncation or padding, the same special-token splitting): the ids are
    the same and transformers' per-text Python work, half the time, is skipped.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None \
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)):
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no character offsets
        return [e.ids for e in encode(texts, add_special_tokens=special)]
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def encode_prompt(tokenizer, prompt: Text, where: str) -> list[int]:
    """Token ids of a prompt ready for generation (chat: with the assistant header)."""
    if isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("chat prompt but the tokenizer has no chat template", where, "prompt")
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def encode_many(tokenizer, items: list[tuple[Text, list[Text], str]]) -> list[tuple[list[int], list[list[int]]]]:
    """``encode`` for many (prompt, completions, where) at once: all texts in two tokenizer calls."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token", where="tokenizer")
    plain_prompts, texts, spans = [], [], []  # plain prompts take the tokenizer's special tokens
    for prompt, completions, where in items:
        start = len(texts)
        if isinstance(prompt, list):
            texts += _chat_texts(tokenizer, prompt, completions, where)
        else:
            plain_prompts.append(prompt)
            texts += completions
        spans.append((start, len(texts)))
    prompt_ids = iter(_token_ids(tokenizer, plain_prompts, True))
    ids = _token_ids(tokenizer, texts, False)
    out = []
    for (prompt, _, where), (a, b) in zip(items, spans):
        if isinstance(prompt, list):
            out.append((ids[a], [_chat_completion(tokenizer, ids[a], full, where) for full in ids[a + 1:b]]))
        else:
            out.append((next(prompt_ids), [c + [eos] for c in ids[a:b]]))
    return out


def encode(tokenizer, prompt: Text, completions: list[Text], where: str) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and one id list per completion, each completion ending with EOS."""
    return encode_many(tokenizer, [(prompt, completions, where)])[0]


CHUNK = 512  # records encoded per batch of tokenizer calls


def _chunks(records: Iterable[Record]) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(itertools.islice(it, CHUNK)):
        yield chunk


def tokenize_records(records: Iterable[Record], tokenizer, max_length: int,
                     max_prompt_length: int) -> tuple[list[TokenizedRecord], TokenizeReport]:
    """Tokenize, then truncate: the prompt keeps its last ``max_prompt_length`` tokens, each
    completion keeps its first ``max_length - len(prompt)`` tokens.

    ``records`` may be a lazy stream: a chunk is tokenized in a worker thread while the next
    is read, so that reading and cleaning overlap the tokenizer's Rust code (which releases
    the GIL) and two cores are used.
    """
    report, out = TokenizeReport(), []
    first: Record | None = None

    def finish(chunk: list[Record], job: Future) -> None:
        for rec, (prompt_ids, comps) in zip(chunk, job.result()):
            if (kept := _truncate(rec, prompt_ids, comps, max_length, max_prompt_length, report)) is not None:
                out.append(kept)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for chunk in _chunks(records):
            first = first or chunk[0]
            report.records_in += len(chunk)
            job = pool.submit(encode_many, tokenizer, [(r.prompt, r.completions, r.source) for r in chunk])
            if pending is not None:
                finish(*pending)
            pending = (chunk, job)
        if pending is not None:
            finish(*pending)
    sizes = {len(r.completion_ids) for r in out}
    if len(sizes) > 1:
        raise UserError(f"records have different numbers of answers ({', '.join(map(str, sorted(sizes)))}); "
                        "every list in one file must have the same length", where=first.source.split(":")[0])
    if len({r.labels is None for r in out}) > 1:
        raise UserError("some lists have scores and some do not; give scores for all or none",
                        where=first.source.split(":")[0], field="scores")
    if out and isinstance(first, Unpaired):
        _add_mismatched(out, max_length)
    report.records_out = len(out)
    return out, report


def _truncate(rec: Record, prompt_ids: list[int], comps: list[list[int]], max_length: int,
              max_prompt_length: int, report: TokenizeReport) -> TokenizedRecord | None:
    """The record within its token budgets, or None (dropped, with the reason in ``report``)."""
    if not prompt_ids:
        report.drop(rec.source, "empty prompt after tokenization")
        return None
    if len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        report.prompts_truncated += 1
        report.events.append((rec.source, "altered", "prompt truncated to its last max_prompt_length tokens"))
    budget = max_length - len(prompt_ids)
    if (cut := sum(len(c) > budget for c in comps)):
        report.completions_truncated += cut
        report.events.append((rec.source, "altered", "answer truncated to fit max_length"))
    comps = [c[:budget] for c in comps]
    if len(comps) > 1 and len(set(map(tuple, comps))) < len(comps):
        report.drop(rec.source, "responses identical (after truncation)")
        return None
    return TokenizedRecord(prompt_ids, comps, rec.source, rec.labels, rec.weight, bool(getattr(rec, "tie", False)))


def _add_mismatched(records: list[TokenizedRecord], max_length: int) -> None:
    """Give each unpaired record a second completion taken from another record, answering a
    different prompt: KTO estimates its reference point z0 from such mismatched pairs.

    The partner is fixed here, half the dataset away, rather than chosen per batch, so the
    reference log-probs of the mismatched completions can be cached like any other.
    """
    n = len(records)
    for i, rec in enumerate(records):
        j = (i + max(n // 2, 1)) % n
        for _ in range(n):  # skip partners that answer the same prompt, if another exists
            if records[j].prompt_ids != rec.prompt_ids:
                break
            j = (j + 1) % n
        rec.completion_ids = [rec.completion_ids[0], records[j].completion_ids[0][: max_length - len(rec.prompt_ids)]]


def collate(records: list[TokenizedRecord], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows, grouped by response: rows [g·B, (g+1)·B) hold response g of each record.

    ``completion_mask`` is True at completion-token positions; positions are the tokens
    being predicted, so the log-prob of token t comes from the logits at t−1.
    """
    rows = [(r.prompt_ids, c) for g in range(len(records[0].completion_ids)) for r in records
            for c in (r.completion_ids[g],)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    cmask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        cmask[i, len(p):n] = True
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask,
             "weights": torch.tensor([r.weight for r in records], dtype=torch.float32)}
    if records[0].labels is not None:
        batch["labels"] = torch.tensor([r.labels for r in records], dtype=torch.float32)
    if any(r.tie for r in records):  # only batches with a tie carry the key
        batch["ties"] = torch.tensor([r.tie for r in records], dtype=torch.bool)
    return batch
