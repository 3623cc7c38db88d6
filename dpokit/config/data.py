"""How the data pipeline reads and cleans records (docs/data.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dpokit.data.formats import FORMATS

# the format registry's names; the format ``pairs`` (prompt/chosen/rejected) gives records of the kind ``pair``
FORMAT_NAMES = Literal[("auto", *FORMATS)]


@dataclass
class DataConfig:
    """Where the data is and how the pipeline reads and cleans it (docs/data.md)."""

    train: str = ""
    """Training records: JSON, JSONL (also .gz), CSV, Parquet, or a ``save_to_disk`` folder; several
    sources mixed by weight as ``a.jsonl:0.6,b.parquet:0.4`` (docs/data.md, several sources)."""
    eval: str | None = None
    """Held-out records evaluated with the same metrics; several sources as ``a.jsonl,b.jsonl``, each
    source's metrics also reported on its own."""
    sources: list | None = None
    """Training sources with their own settings, instead of ``train``: a list of mappings with
    ``path``, optional ``weight`` and any data setting (``format``, ``columns``, ``pairing``...)."""
    mix_temperature: float = 1.0
    """Sources without weights: shares ∝ size^(1/T); 1 concatenates them, larger evens them out."""
    max_length: int = 512
    """Token budget for prompt + completion; completions keep their start."""
    max_prompt_length: int = 256
    """Token budget for the prompt; prompts keep their end."""
    format: FORMAT_NAMES = "auto"
    """Input format; ``auto`` tells it from the first record's fields."""
    columns: str = ""
    """Field names to read from other columns, ``name=column,...`` (e.g. ``prompt=instruction,chosen=output_a``;
    a column may be a dotted path into nested objects)."""
    pairing: Literal["best-worst", "best-each", "all"] = "best-worst"
    """How rated or ranked answers become pairs: best vs worst, best vs each other, or every pair
    whose scores differ by more than ``min_margin``."""
    min_margin: float = 0.0
    """A pair from a list needs score(better) − score(worse) > this (rankings score positions k−1…0)."""
    votes: Literal["majority", "unanimous"] = "majority"
    """How several annotators' votes on one pair decide it."""
    vote_codes: str = ""
    """Coded votes mapped to choices, ``1=a,2=b,0=tie`` (a vote that matches no code is an error)."""
    ties: Literal["drop", "keep"] = "drop"
    """Pairs judged a tie: dropped, or kept marked ``"tie": true`` (``dpokit data convert``, and the
    losses that train on ties: ``dpo_rk``, ``dpo_davidson``)."""
    latents: Literal["mean", "sample"] = "mean"
    """Diffusion policy on a Stable Diffusion-style folder: each image's latent is the VAE
    posterior's mean, or one draw from it (seeded by ``train.seed`` and the image's place), encoded
    once and cached (docs/diffusion.md)."""
    click_min_dwell: float = 0.0
    """Click logs: a click with a dwell time (seconds) below this counts as no click."""
    click_bias: float = 0.0
    """Click logs: η of the position-bias weight k^η of a pair whose clicked item is at position k (0: off)."""
    dedup: Literal["normalized", "exact", "off"] = "normalized"
    """Drop repeated records: exact copies, also copies that differ only in whitespace or case, or none."""
    drop_empty: bool = True
    """Drop records with an empty prompt or answer."""
    drop_identical: bool = True
    """Drop pairs and lists whose answers are equal (after whitespace/case normalisation)."""
    drop_conflicts: bool = True
    """Drop records whose prompt and answers also occur with the opposite label (both sides)."""
    drop_leaks: bool = True
    """Drop records whose answers contain template text: role tags, special tokens, EOS text."""
    min_chars: int = 0
    """Drop records with an answer shorter than this many characters (0: off)."""
    max_chars: int = 0
    """Drop records whose prompt or an answer is longer than this many characters (0: off)."""
    max_length_ratio: float = 0.0
    """Drop pairs and lists whose longest answer is more than this many times the shortest (0: off)."""
    balance: Literal["off", "over", "under"] = "off"
    """Equal counts per ``balance_by`` group, by repeating records of small groups or sampling large ones."""
    balance_by: str = "label"
    """Balancing key: ``label`` (unpaired records) or an input column, e.g. ``source``."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed record stops the run, or is skipped and counted in the report."""
    cache: bool = True
    """Cache tokenized data, keyed by the data's hash, the tokenizer and these settings."""
    cache_dir: str | None = None
    """Where tokenized data is cached (default ``OUTPUT/data_cache``); share it between runs."""

    def checks(self) -> list[tuple[bool, str, str]]:
        """(bad, field, message) for the data settings, for ``RunConfig.validate``."""
        from dpokit.data.fields import parse_columns, parse_vote_codes

        from dpokit.data.mix import sources_of

        parse_columns(self.columns)  # raises on a malformed mapping
        parse_vote_codes(self.vote_codes)
        if self.sources is not None and self.train:
            from dpokit.errors import UserError

            raise UserError("give the training data as data.train or as data.sources, not both", where="config",
                            field="data.sources")
        sources_of(self, "train"), sources_of(self, "eval")  # raise on a malformed spec
        return [
            (self.mix_temperature <= 0, "data.mix_temperature", "must be > 0"),
            (self.min_margin < 0, "data.min_margin", "must be ≥ 0"),
            (self.click_min_dwell < 0, "data.click_min_dwell", "must be ≥ 0"),
            (self.click_bias < 0, "data.click_bias", "must be ≥ 0"),
            (self.min_chars < 0, "data.min_chars", "must be ≥ 0"),
            (self.max_chars < 0 or 0 < self.max_chars <= self.min_chars, "data.max_chars",
             "must be 0 (off) or larger than data.min_chars"),
            (self.max_length_ratio != 0 and self.max_length_ratio < 1, "data.max_length_ratio",
             "must be 0 (off) or ≥ 1"),
            (self.balance != "off" and not self.balance_by, "data.balance_by", "is required to balance"),
        ]

