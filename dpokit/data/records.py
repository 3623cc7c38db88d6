"""Typed records: what every input format is turned into before tokenization.

A prompt or completion is either plain text or a list of chat messages
(``{"role": ..., "content": ...}``); chat is rendered later with the tokenizer's template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Messages = list[dict[str, str]]
Text = Union[str, Messages]


@dataclass
class Pair:
    """One preference: ``chosen`` is better than ``rejected`` as an answer to ``prompt``."""

    prompt: Text
    chosen: Text
    rejected: Text
    source: str
    """Where the record came from (``file:line``), for error messages and reports."""
    weight: float = 1.0
    """Relative weight of this pair in the loss (e.g. a click log's position-bias weight)."""
    tie: bool = False
    """Neither answer is better (kept only when asked: ``data.ties=keep``, for the losses that take ties)."""
    meta: dict = field(default_factory=dict)
    """Input columns carried along: the balancing key when balancing by a column."""

    @property
    def completions(self) -> list[Text]:
        return [self.chosen, self.rejected]

    @property
    def labels(self) -> None:
        return None


@dataclass
class RankedList:
    """k answers to one prompt, best first (listwise losses)."""

    prompt: Text
    completions: list[Text]
    source: str
    scores: list[float] | None = None
    """Graded relevance of each answer (higher is better, same order), when the data has it."""
    weight: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[float] | None:
        return self.scores


@dataclass
class Unpaired:
    """One answer with a binary judgement: desirable (thumbs up) or undesirable (KTO)."""

    prompt: Text
    completion: Text
    desirable: bool
    source: str
    weight: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def completions(self) -> list[Text]:
        return [self.completion]

    @property
    def labels(self) -> list[float]:
        return [1.0 if self.desirable else 0.0]


@dataclass
class SFTExample:
    """One demonstration: train the model to write ``completion`` after ``prompt``."""

    prompt: Text
    completion: Text
    source: str
    weight: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def completions(self) -> list[Text]:
        return [self.completion]

    @property
    def labels(self) -> None:
        return None


Record = Union[Pair, RankedList, Unpaired, SFTExample]
KINDS = {"pair": Pair, "list": RankedList, "unpaired": Unpaired, "sft": SFTExample}
"""Record kind names, as losses declare them in ``LossSpec.input_kind``."""
