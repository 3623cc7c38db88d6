"""``linear_scorer``: a linear model that scores candidate items for a context, as a policy.

A record's prompt is the context and its responses are the candidates (pairs: two, ranked lists:
k), both plain text, read through the same data pipeline as an LM's records. Features are hashed
words: every (context word, item word) pair and every item word alone, each mapped to one of
``buckets`` weights (the hashing trick, with the quadratic interactions of ``vw -q``), so

    s(x, y) = Σ_{u ∈ x, v ∈ y} w[h(u, v)] + Σ_{v ∈ y} w[h(v)],
    log π(y_i | x) = s(x, y_i) − log Σ_j s(x, y_j)   (a softmax over the record's candidates),

the Plackett–Luce probability of choosing y_i first among the items shown. A folder holds
``scorer.json`` (its settings) and ``model.safetensors``; ``write_scorer`` makes a new one, all
weights zero (every candidate equally likely).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpokit.data.readers import iter_records
from dpokit.data.report import DataReport
from dpokit.errors import UserError
from dpokit.logps import Logps
from dpokit.store.atomic import atomic_folder

SETTINGS = "scorer.json"
WEIGHTS = "model.safetensors"
_WORD = re.compile(r"\w+")


@dataclass
class ScoredRecord:
    features: list[list[int]]
    """Per candidate, best first: the hashed feature ids of (context, candidate)."""
    source: str
    labels: list[float] | None = None
    weight: float = 1.0
    tie: bool = False

    @property
    def responses(self) -> int:
        return len(self.features)


class ScorerModel(torch.nn.Module):
    """The weights: one scalar per hash bucket, summed over a row's features."""

    def __init__(self, buckets: int):
        super().__init__()
        self.buckets = buckets
        self.weights = torch.nn.EmbeddingBag(buckets, 1, mode="sum")
        torch.nn.init.zeros_(self.weights.weight)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.weights(ids, offsets).squeeze(-1)

    def save_pretrained(self, folder, safe_serialization: bool = True, state_dict: dict | None = None) -> None:
        """What ``train.checkpoint`` calls on any policy module (the same name as transformers')."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS).write_text(json.dumps({"policy": "linear_scorer", "buckets": self.buckets}))
        state = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / WEIGHTS))


def write_scorer(folder: str | Path, buckets: int = 1 << 16) -> Path:
    """A new scorer folder: every weight zero."""
    with atomic_folder(Path(folder), "model") as tmp:
        ScorerModel(buckets).save_pretrained(tmp)
    return Path(folder)


def _hash(text: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % buckets


def _words(text) -> list[str]:
    if not isinstance(text, str):  # chat messages: every message's content
        text = " ".join(m["content"] for m in text)
    return _WORD.findall(text.lower())


def features(context, item, buckets: int) -> list[int]:
    """The hashed features of one (context, item): each word pair, and each item word alone."""
    ctx, words = _words(context), _words(item)
    return ([_hash(f"{u}\0{v}", buckets) for u in ctx for v in words]
            + [_hash(f"\1{v}", buckets) for v in words])


class LinearScorer:
    name = "linear_scorer"

    def __init__(self, cfg, buckets: int) -> None:
        self.cfg, self.buckets = cfg, buckets

    @classmethod
    def from_config(cls, cfg) -> LinearScorer:
        return cls(cfg, _settings(cfg.model.path)["buckets"])

    def checks(self, spec) -> list[tuple[bool, str, str]]:
        return [
            (spec.input_kind not in ("pair", "list"), "loss.name",
             f"linear_scorer ranks a record's candidates: '{spec.name}' takes {spec.input_kind} records; "
             "use a pairwise or listwise loss"),
            (spec.token_kl, "loss.name", f"'{spec.name}' needs per-token distributions, which a scorer has not"),
            (self.cfg.lora.enabled, "lora.enabled", "linear_scorer has no adapters; train its weights"),
            (self.cfg.loss.wpo and self.cfg.loss.wpo_alignment != "none", "loss.wpo_alignment",
             "linear_scorer gives no per-token distributions to align WPO's weights with; use none"),
        ]

    def records(self, path: str, input_kind: str, name: str, log) -> list[ScoredRecord]:
        report = DataReport()
        out = [ScoredRecord([features(rec.prompt, c, self.buckets) for c in rec.completions], rec.source,
                            rec.labels, rec.weight, bool(getattr(rec, "tie", False)))
               for rec in iter_records(path, input_kind, self.cfg.data, report)]
        report.write_json(Path(self.cfg.train.output) / f"data_report_{name}.json")
        for line in report.lines():
            log(f"[data:{name}] {line}")
        if not out:
            raise UserError("no usable records", where=path)
        return out

    def load(self, path: str) -> ScorerModel:
        model = ScorerModel(_settings(path)["buckets"])
        try:
            model.load_state_dict(load_file(str(Path(path) / WEIGHTS)))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot load the scorer's weights: {str(exc).splitlines()[0]}", where=path) from None
        return model

    def trainable(self, module: ScorerModel) -> ScorerModel:
        return module

    def adapters_off(self, module):
        raise UserError("linear_scorer has no adapters", where="config", field="train.ref")

    def batch(self, records: list[ScoredRecord], indices: list[int], device) -> dict:
        chosen = [records[i] for i in indices]
        rows = [r.features[g] for g in range(chosen[0].responses) for r in chosen]  # grouped by candidate
        lengths = torch.tensor([len(f) for f in rows])
        batch = {"ids": torch.tensor([i for f in rows for i in f], dtype=torch.long),
                 "offsets": torch.cumsum(lengths, 0) - lengths,
                 "completion_mask": torch.ones(len(rows), 1, dtype=torch.bool),
                 "weights": torch.tensor([r.weight for r in chosen], dtype=torch.float32)}
        if chosen[0].labels is not None:
            batch["labels"] = torch.tensor([r.labels for r in chosen], dtype=torch.float32)
        if any(r.tie for r in chosen):
            batch["ties"] = torch.tensor([r.tie for r in chosen], dtype=torch.bool)
        return {k: v.to(device) for k, v in batch.items()}

    def logps(self, module, batch: dict, group: int, reference: Logps | None = None, full: bool = False) -> Logps:
        scores = module(batch["ids"], batch["offsets"]).float().view(group, -1)
        logp = scores - torch.logsumexp(scores, dim=0)
        return Logps(logp.unsqueeze(-1), batch["completion_mask"].view(group, -1, 1))

    def real_tokens(self, batch: dict, group: int, input_kind: str) -> int:
        return int(batch["completion_mask"].sum())  # the candidates scored

    def fingerprint(self, records: list[ScoredRecord]) -> str:
        h = hashlib.sha256(str(self.buckets).encode())
        for r in records:
            h.update(json.dumps(r.features).encode())
        return h.hexdigest()

    def save(self, module: ScorerModel, folder: Path, weights: dict | None = None) -> None:
        with atomic_folder(Path(folder), "model") as tmp:
            module.save_pretrained(tmp, state_dict=weights)


def _settings(path: str) -> dict:
    file = Path(path) / SETTINGS
    try:
        settings = json.loads(file.read_text())
    except (OSError, ValueError):
        raise UserError(f"not a linear_scorer folder: {SETTINGS} is missing or unreadable "
                        "(dpokit.policies.scorer.write_scorer makes one)", where=path) from None
    if not isinstance(settings.get("buckets"), int) or settings["buckets"] < 1:
        raise UserError("buckets must be a positive integer", where=str(file), field="buckets")
    return settings
