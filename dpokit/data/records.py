"""Typed records: what every input format is turned into before tokenization.

A prompt or completion is either plain text or a list of chat messages
(``{"role": ..., "content": ...}``); chat is rendered later with the tokenizer's template.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def completions(self) -> list[Text]:
        return [self.chosen, self.rejected]


@dataclass
class SFTExample:
    """One demonstration: train the model to write ``completion`` after ``prompt``."""

    prompt: Text
    completion: Text
    source: str

    @property
    def completions(self) -> list[Text]:
        return [self.completion]
