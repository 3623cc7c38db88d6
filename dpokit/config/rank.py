"""``dpokit rank simulate`` and ``dpokit rank eval``: the click simulator's world and logger, and
the off-policy evaluation of a ranker on a log (docs/ranking.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dpokit.errors import UserError

MAX_SLATE = 5
"""Exact propensities enumerate ordered prefixes of the slate: n^(k-1) of them, so k stays small."""


def _raise_first(checks: list[tuple[bool, str, str]]) -> None:
    for bad, key, msg in checks:
        if bad:
            raise UserError(msg, where="config", field=key)


@dataclass
class SimulateConfig:
    out: str = ""
    """Folder to write ``log.jsonl``, ``items.jsonl`` and the sidecar ``simulator.json`` into
    (required by ``dpokit rank simulate``; the simulator itself needs none)."""
    users: int = 100
    """Users (contexts), drawn uniformly for each impression."""
    items: int = 20
    """Items in the catalogue."""
    slate: int = 3
    """Positions shown per impression."""
    dim: int = 4
    """Size of the latent user and item factors."""
    genres: int = 4
    """Item genres (a categorical item feature; items of a genre have close factors)."""
    impressions: int = 5000
    """Slates logged (each gives one record per position)."""
    logger: Literal["softmax", "epsilon"] = "softmax"
    """Logging policy over a noisy view of the true affinities: Plackett-Luce sampling of
    softmax(score / temperature), or the top slate with probability 1 - epsilon and a uniform one
    otherwise."""
    temperature: float = 1.0
    """The softmax logger's temperature."""
    epsilon: float = 0.2
    """The epsilon-greedy logger's share of uniform slates."""
    logger_noise: float = 1.0
    """Standard deviation of the noise on the logger's scores (fixed per user and item)."""
    click_model: Literal["pbm", "cascade"] = "pbm"
    """pbm: click = examined (prob. position^-eta) and attracted; cascade: the user reads down the
    slate and stops at the first click."""
    eta: float = 1.0
    """Position bias of the pbm click model: position p is examined with probability p^-eta."""
    offset: float = 2.0
    """Attractiveness is sigmoid(u·v - price - offset): a larger offset, fewer clicks."""
    seed: int = 0
    """Seed of the world: factors, features, the logger's noise."""
    log_seed: int = 1
    """Seed of the log's users, slates and clicks: another value, another log of the same world
    (a held-out log to evaluate on)."""

    def validate(self) -> SimulateConfig:
        _raise_first([
            (self.users < 1, "users", "must be ≥ 1"),
            (self.items < 2, "items", "must be ≥ 2"),
            (not 1 <= self.slate <= min(MAX_SLATE, self.items), "slate",
             f"must be between 1 and {MAX_SLATE} and at most the number of items"),
            (self.dim < 1, "dim", "must be ≥ 1"),
            (self.genres < 1, "genres", "must be ≥ 1"),
            (self.impressions < 0, "impressions", "must be ≥ 0"),
            (self.temperature <= 0, "temperature", "must be > 0"),
            (not 0 <= self.epsilon <= 1, "epsilon", "must be in [0, 1]"),
            (self.logger == "epsilon" and self.epsilon == 0, "epsilon",
             "an epsilon-greedy logger with epsilon 0 gives most items propensity 0; off-policy estimates need > 0"),
            (self.logger_noise < 0, "logger_noise", "must be ≥ 0"),
            (self.eta < 0, "eta", "must be ≥ 0"),
        ])
        return self


@dataclass
class RankEvalConfig:
    ranker: str = ""
    """The item_ranker folder whose slate policy is evaluated."""
    log: str = ""
    """Logged-bandit records (JSON Lines, see docs/ranking.md)."""
    truth: str | None = None
    """The simulator's sidecar (``simulator.json``) for the true values; default: the one beside the log, if any."""
    target: Literal["greedy", "softmax"] = "greedy"
    """The ranker's slate policy: its top items in order, or Plackett-Luce sampling of softmax(score / temperature)."""
    temperature: float = 1.0
    """Temperature of the softmax target."""
    clip: float = 0.0
    """Clip the importance weights π_target/π_log at this value (0: no clipping)."""
    bootstrap: int = 0
    """Also give bootstrap percentile intervals from this many resamples (0: normal intervals only)."""
    level: float = 0.95
    """Coverage of the intervals."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed log record stops the command, or is skipped and counted."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    output: str | None = None
    """Also write the estimates (and true values) as JSON to this file."""

    def validate(self) -> RankEvalConfig:
        _raise_first([
            (not self.ranker, "ranker", "is required (--ranker)"),
            (not self.log, "log", "is required (--log)"),
            (self.temperature <= 0, "temperature", "must be > 0"),
            (self.clip < 0, "clip", "must be ≥ 0 (0: no clipping)"),
            (self.bootstrap < 0, "bootstrap", "must be ≥ 0"),
            (not 0 < self.level < 1, "level", "must be in (0, 1)"),
        ])
        return self


@dataclass
class RankRecordsConfig:
    log: str = ""
    """Logged-bandit records (JSON Lines, see docs/ranking.md)."""
    out: str = ""
    """The item_ranker training records to write (JSON Lines)."""
    items: str | None = None
    """An item table (``items.jsonl``, or a ranker folder): item ids outside it are errors."""
    mode: Literal["pairs", "skip_above", "lists"] = "pairs"
    """pairs: a click over each unclicked shown item; skip_above: over those shown above it only;
    lists: a click then ``negatives`` unclicked shown items."""
    negatives: int = 1
    """Unclicked items per list (mode lists)."""
    ips: bool = True
    """Weight each record by 1/propensity of its click."""
    clip: float = 0.0
    """Clip the weights at this value (0: no clipping)."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed log record stops the command, or is skipped and counted."""

    def validate(self) -> RankRecordsConfig:
        _raise_first([
            (not self.log, "log", "is required (--log)"),
            (not self.out, "out", "is required (--out)"),
            (self.negatives < 1, "negatives", "must be ≥ 1"),
            (self.clip < 0, "clip", "must be ≥ 0 (0: no clipping)"),
        ])
        return self
