"""``dpokit rank simulate|records|eval|update|check|watch``: the click simulator's world and logger,
training records from a log, the off-policy evaluation of a ranker on a log, a ranker's daily update
and the check that rolls back a current ranker fallen behind the previous one (docs/ranking.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpokit.config.model import default_registry
from dpokit.config.run import RunConfig
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


@dataclass
class HeldOutSettings:
    """Two rankers' click rates estimated on a log neither trained on, and the paired gain of one
    over the other: the figures a daily update decides on and a check re-reads."""

    held_out: str = ""
    """Logged-bandit records neither ranker trains on: both rankers' click rates are estimated on them."""
    truth: str | None = None
    """The simulator's sidecar for the true values (recorded, never decided on); default: the one beside the held-out log, if any."""
    estimator: Literal["snips", "dr"] = "snips"
    """The off-policy estimator of both policies' click rates on the held-out log."""
    target: Literal["softmax", "greedy"] = "softmax"
    """The slate policy a ranker serves: Plackett-Luce sampling of softmax(score / temperature), or its top items."""
    temperature: float = 1.0
    """Temperature of the softmax target, and of the candidate distributions the KL compares."""
    eval_clip: float = 0.0
    """Clip the estimator's importance weights at this value (0: no clipping)."""
    level: float = 0.95
    """Coverage of the intervals."""

    def estimate_checks(self, prefix: str = "") -> list[tuple[bool, str, str]]:
        return [
            (not self.held_out, f"{prefix}held_out", "is required (--held-out: logged records to evaluate on)"),
            (self.temperature <= 0, f"{prefix}temperature", "must be > 0"),
            (self.eval_clip < 0, f"{prefix}eval_clip", "must be ≥ 0 (0: no clipping)"),
            (not 0 < self.level < 1, f"{prefix}level", "must be in (0, 1)"),
        ]


@dataclass
class RankDailySettings(HeldOutSettings):
    """A ranker's daily update: the day's log to train on, the held-out log to evaluate on, and the
    rule that promotes or refuses (docs/ranking.md)."""

    log: str = ""
    """The day's logged-bandit records: the challenger trains on the records made from its clicks."""
    mode: Literal["pairs", "skip_above", "lists"] = "pairs"
    """The training records made from the day's clicks (as ``dpokit rank records --mode``)."""
    negatives: int = 1
    """Unclicked items per list (mode lists)."""
    ips: bool = True
    """Weight each training record by 1/propensity of its click."""
    records_clip: float = 20.0
    """Clip those weights at this value (0: no clipping)."""
    min_gain: float = 0.0
    """Promote only if the lower end of the interval of the click-rate gain (challenger − champion) exceeds this."""
    max_kl: float = 0.5
    """Promote only if the mean KL of the challenger to the champion over the held-out contexts is at most this (nats)."""
    wait: bool = False
    """When another update holds the registry, wait for it (default: exit with code 2)."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (not self.log, "daily.log", "is required (--log: the day's logged records)"),
            *self.estimate_checks("daily."),
            (bool(self.log) and Path(self.log).resolve() == Path(self.held_out).resolve(), "daily.held_out",
             "is the day's log: estimates on the clicks the challenger trained on are biased upward; "
             "give a log it does not train on"),
            (self.negatives < 1, "daily.negatives", "must be ≥ 1"),
            (self.records_clip < 0, "daily.records_clip", "must be ≥ 0 (0: no clipping)"),
            (self.min_gain < 0, "daily.min_gain", "must be ≥ 0"),
            (self.max_kl <= 0, "daily.max_kl", "must be > 0"),
        ]


@dataclass
class RankCheckConfig(HeldOutSettings):
    """``dpokit rank check`` and ``watch``: the registry's current ranker against the version current
    before it, on a fixed canary log (``held_out``), and the margin past which it is rolled back."""

    registry: str | None = field(default_factory=default_registry)
    """The registry folder whose current version is checked (default: $DPOKIT_REGISTRY)."""
    margin: float = 0.0
    """Roll back when the interval of the click-rate gain (current − previous) lies wholly below −this."""
    interval: float = 3600.0
    """``watch``: seconds between checks."""
    times: int = 0
    """``watch``: stop after this many checks (0: keep watching)."""

    def validate(self) -> RankCheckConfig:
        _raise_first([
            (not self.registry, "registry", "is required (--registry, or set DPOKIT_REGISTRY)"),
            *self.estimate_checks(),
            (bool(self.truth) and not Path(self.truth).is_file(), "truth", f"file not found: {self.truth}"),
            (self.margin < 0, "margin", "must be ≥ 0"),
            (self.interval < 0, "interval", "must be ≥ 0"),
            (self.times < 0, "times", "must be ≥ 0"),
        ])
        return self


@dataclass
class RankUpdateConfig(RunConfig):
    """``dpokit rank update``: the challenger's training run (the flags of ``dpokit dpo``), started
    from the registry's current ranker with it as the reference, plus the day's settings."""

    daily: RankDailySettings = field(default_factory=RankDailySettings)

    def validate(self) -> RankUpdateConfig:
        _raise_first([
            (not self.train.registry, "train.registry", "is required (--registry, or set DPOKIT_REGISTRY)"),
            (bool(self.model.path), "model.path", "is the registry's current version; do not set it"),
            (self.model.ref_path is not None, "model.ref_path", "is the champion (the reference of a daily update)"),
            (bool(self.data.train), "data.train", "is made from the day's log (--log); do not set it"),
            *self.daily.checks(),
        ])
        from dpokit.losses import get_loss

        try:
            self.loss.resolve_defaults(get_loss(self.loss.name).defaults)
        except (KeyError, ValueError) as exc:
            raise UserError(exc.args[0], where="config", field="loss.name") from None
        return self  # the training settings are checked once the champion fills model.path


RANK_UPDATE_NOT_FLAGS = ("model.path", "model.ref_path", "model.policy", "data.train", "train.output",
                         "train.resume", "train.ref")
"""Set by the update itself: the champion (an item_ranker) and its reference, the training records
made from the day's log, the update's run folder, and resuming."""
