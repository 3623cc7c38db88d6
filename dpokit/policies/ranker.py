"""``item_ranker``: a torch ranker over context and item features, as a policy.

A record is a context (a dict of feature columns) and candidate item ids, best first
(``{"context": {...}, "items": ["a", "b", ...], "weight": 1}``). Item features are joined from the
item table the model folder holds (``items.jsonl``, one ``{"id": ..., column: value}`` a line).
Numeric columns enter linearly, categorical ones as hashed ids into embedding tables, so

    c(x) = A·x_num + Σ_col E_ctx[h(col=x_col)],   v(y) = B·y_num + Σ_col E_item[h(col=y_col)] + E_id[h(y)],
    s(x, y) = c(x)·v(y) + b(y),   log π(y_i | x, C) = s_i − log Σ_{j ∈ C} exp(s_j),

a softmax over the record's candidates C (the Plackett–Luce probability of choosing y_i first;
``slate_logp`` gives a whole slate's). A folder holds ``ranker.json`` (columns, sizes),
``items.jsonl`` and ``model.safetensors``; ``write_ranker`` makes one with seeded small weights
(a dot product of two zero vectors would have no gradient).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpokit.errors import UserError
from dpokit.logps import Logps
from dpokit.store.atomic import atomic_folder

SETTINGS, ITEMS, WEIGHTS = "ranker.json", "items.jsonl", "model.safetensors"
_SIZES = ("buckets", "dim")


@dataclass
class RankRecord:
    numeric: list[float]
    categorical: list[int]
    items: list[int]
    """Rows of the item table, best first."""
    source: str
    weight: float = 1.0
    labels: list[float] | None = None
    log_propensities: list[float] | None = None
    """The logging policy's log π₀ of each item, in ``items`` order (records made from a log)."""

    @property
    def responses(self) -> int:
        return len(self.items)


def _hash(text: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % buckets


def _columns(obj: dict, numeric: list[str], categorical: list[str], buckets: int, where: str):
    """(numeric values, hashed categorical ids) of ``obj``; a missing or wrong column is the user's error."""
    nums = []
    for col in numeric:
        value = obj.get(col)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError("missing or not a finite number", where, col)
        nums.append(float(value))
    cats = []
    for col in categorical:
        if col not in obj or obj[col] is None:
            raise UserError("missing categorical column", where, col)
        cats.append(_hash(f"{col}={obj[col]}", buckets))
    return nums, cats


class RankerModel(torch.nn.Module):
    """Two towers and a bias; the item table's features are buffers, saved with the weights."""

    def __init__(self, settings: dict, items: list[dict], where: str):
        super().__init__()
        self.settings, self.items = settings, items
        item_num, item_cat, item_ids = _table(settings, items, where)
        d, n = settings["dim"], settings["buckets"]
        self.ctx_num = torch.nn.Linear(len(settings["context_numeric"]), d, bias=False)
        self.item_num = torch.nn.Linear(len(settings["item_numeric"]), d, bias=False)
        self.ctx_cat = torch.nn.Embedding(n, d)
        self.item_cat = torch.nn.Embedding(n, d)
        self.item_id = torch.nn.Embedding(n, d)
        self.bias = torch.nn.Embedding(n, 1)
        self.register_buffer("table_num", item_num)
        self.register_buffer("table_cat", item_cat)
        self.register_buffer("table_id", item_ids)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores (G·B,) of ``items`` (G·B rows of the table, grouped by candidate) for B contexts."""
        c = self.ctx_num(numeric) + self.ctx_cat(categorical).sum(1)  # (B, d)
        v = (self.item_num(self.table_num[items]) + self.item_cat(self.table_cat[items]).sum(1)
             + self.item_id(self.table_id[items]))  # (G·B, d)
        group = items.shape[0] // c.shape[0]
        return (v * c.repeat(group, 1)).sum(-1) + self.bias(self.table_id[items]).squeeze(-1)

    def save_pretrained(self, folder, safe_serialization: bool = True, state_dict: dict | None = None) -> None:
        """What ``train.checkpoint`` calls on any policy module; the item table travels with it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS).write_text(json.dumps(self.settings))
        (folder / ITEMS).write_text("".join(json.dumps(r) + "\n" for r in self.items))
        state = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / WEIGHTS))


def _table(settings: dict, items: list[dict], where: str):
    n = settings["buckets"]
    num, cat, ids = [], [], []
    for row, item in enumerate(items, 1):
        if "id" not in item:
            raise UserError("item without an id", f"{where}:{row}", "id")
        x, c = _columns(item, settings["item_numeric"], settings["item_categorical"], n, f"{where}:{row}")
        num.append(x), cat.append(c), ids.append(_hash(f"id={item['id']}", n))
    return (torch.tensor(num, dtype=torch.float32).view(len(items), -1),
            torch.tensor(cat, dtype=torch.long).view(len(items), -1), torch.tensor(ids, dtype=torch.long))



def write_ranker(folder, items: list[dict], context_numeric=(), context_categorical=(), item_numeric=(),
                 item_categorical=(), buckets: int = 1 << 14, dim: int = 16, seed: int = 0) -> Path:
    """A new ranker folder: the item table and seeded weights of scale 0.1."""
    settings = {"policy": "item_ranker", "context_numeric": list(context_numeric),
                "context_categorical": list(context_categorical), "item_numeric": list(item_numeric),
                "item_categorical": list(item_categorical), "buckets": buckets, "dim": dim}
    torch.manual_seed(seed)
    model = RankerModel(settings, list(items), str(folder))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    with atomic_folder(Path(folder), "model") as tmp:
        model.save_pretrained(tmp)
    return Path(folder)


def slate_logp(scores: torch.Tensor) -> torch.Tensor:
    """Plackett–Luce log-probability of showing a slate in its order: scores (k, ...) in slate
    order, Σ_i [s_i − log Σ_{j ≥ i} exp(s_j)]."""
    tail = torch.logcumsumexp(scores.flip(0), dim=0).flip(0)
    return (scores - tail).sum(0)


class ItemRanker:
    name = "item_ranker"

    def __init__(self, cfg, settings: dict, items: list[dict]) -> None:
        self.cfg, self.settings, self.items = cfg, settings, items
        self.rows = {str(item["id"]): i for i, item in enumerate(items)}

    @classmethod
    def from_config(cls, cfg) -> ItemRanker:
        return cls(cfg, *_read_folder(cfg.model.path))

    def checks(self, spec) -> list[tuple[bool, str, str]]:
        return [
            (spec.input_kind not in ("pair", "list"), "loss.name",
             f"item_ranker ranks a record's candidates: '{spec.name}' takes {spec.input_kind} records; "
             "use a pairwise or listwise loss"),
            (spec.token_kl, "loss.name", f"'{spec.name}' needs per-token distributions, which a ranker has not"),
            (self.cfg.lora.enabled, "lora.enabled", "item_ranker has no adapters; train its weights"),
        ]

    def records(self, path: str, input_kind: str, name: str, log, options=None) -> list[RankRecord]:
        if options is not None:
            raise UserError("per-source data settings apply to text data; a ranker's records have none",
                            where=path, field="data.sources")
        out = []
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read: {exc.strerror}", where=path) from None
        for row, line in enumerate(lines, 1):
            if line.strip():
                out.append(self._record(line, f"{path}:{row}", input_kind))
        if not out:
            raise UserError("no usable records", where=path)
        if len({r.responses for r in out}) > 1:
            raise UserError("every record needs the same number of items", where=path, field="items")
        log(f"[data:{name}] {len(out)} ranked records")
        return out

    def _record(self, line: str, where: str, input_kind: str) -> RankRecord:
        try:
            obj = json.loads(line)
        except ValueError:
            raise UserError("not a JSON object", where) from None
        ctx, items = obj.get("context"), obj.get("items")
        if not isinstance(ctx, dict):
            raise UserError("missing or not an object", where, "context")
        if not isinstance(items, list) or len(items) < 2 or (input_kind == "pair" and len(items) != 2):
            raise UserError("needs a list of at least 2 item ids (2 for pairwise losses)", where, "items")
        rows = []
        for i, item in enumerate(items):
            if str(item) not in self.rows:
                raise UserError(f"unknown item id {item!r} (not in the ranker's {ITEMS})", where, f"items[{i}]")
            rows.append(self.rows[str(item)])
        weight = obj.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight > 0 and math.isfinite(weight)):
            raise UserError("must be a positive finite number", where, "weight")
        nums, cats = _columns(ctx, self.settings["context_numeric"], self.settings["context_categorical"],
                              self.settings["buckets"], where)
        return RankRecord(nums, cats, rows, where.rsplit(":", 1)[0], float(weight),
                          log_propensities=self._log_propensities(obj, len(items), where))

    def _log_propensities(self, obj: dict, n: int, where: str) -> list[float] | None:
        """The record's ``log_propensities``, checked: one finite log-probability ≤ 0 per item;
        required when the reference is the logged one (``--ref logged``)."""
        values = obj.get("log_propensities")
        if values is None:
            if self.cfg is not None and self.cfg.train.ref == "logged":
                raise UserError("missing: --ref logged needs each item's logged log-propensity "
                                "(dpokit rank records writes them)", where, "log_propensities")
            return None
        if not isinstance(values, list) or len(values) != n:
            raise UserError(f"must be a list of {n} numbers, one per item", where, "log_propensities")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v <= 0):
                raise UserError("must be a finite log-probability (≤ 0)", where, f"log_propensities[{i}]")
        return [float(v) for v in values]

    def load(self, path: str) -> RankerModel:
        settings, items = _read_folder(path)
        model = RankerModel(settings, items, str(Path(path) / ITEMS))
        try:
            model.load_state_dict(load_file(str(Path(path) / WEIGHTS)))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot load the ranker's weights: {str(exc).splitlines()[0]}", where=path) from None
        return model

    def trainable(self, module: RankerModel) -> RankerModel:
        return module

    def adapters_off(self, module):
        raise UserError("item_ranker has no adapters", where="config", field="train.ref")

    def batch(self, records: list[RankRecord], indices: list[int], device) -> dict:
        chosen = [records[i] for i in indices]
        group = chosen[0].responses
        batch = {"numeric": torch.tensor([r.numeric for r in chosen], dtype=torch.float32).view(len(chosen), -1),
                 "categorical": torch.tensor([r.categorical for r in chosen], dtype=torch.long).view(len(chosen), -1),
                 "items": torch.tensor([r.items[g] for g in range(group) for r in chosen], dtype=torch.long),
                 "completion_mask": torch.ones(group * len(chosen), 1, dtype=torch.bool),
                 "weights": torch.tensor([r.weight for r in chosen], dtype=torch.float32)}
        if all(r.log_propensities is not None for r in chosen):
            batch["log_propensities"] = torch.tensor([r.log_propensities[g] for g in range(group) for r in chosen],
                                                     dtype=torch.float32)
        return {k: v.to(device) for k, v in batch.items()}

    def logged_logps(self, batch: dict, group: int) -> Logps:
        """The logging policy as the reference (``--ref logged``): log π₀(y_i | x, C) =
        log p_i − log Σ_{j∈C} p_j, the logged propensities of the record's candidates renormalised
        over them, so that they are a distribution over C as the ranker's log-softmax is (pairwise
        and listwise losses see only their differences, where the normaliser cancels)."""
        if "log_propensities" not in batch:
            raise UserError("the records carry no log_propensities: --ref logged needs records made from a log "
                            "(dpokit rank records)", where="config", field="train.ref")
        logp = batch["log_propensities"].view(group, -1)
        logp = logp - torch.logsumexp(logp, dim=0)
        return Logps(logp.unsqueeze(-1), batch["completion_mask"].view(group, -1, 1))

    def logps(self, module, batch: dict, group: int, reference: Logps | None = None, full: bool = False) -> Logps:
        scores = module(batch["numeric"], batch["categorical"], batch["items"]).float().view(group, -1)
        logp = scores - torch.logsumexp(scores, dim=0)
        return Logps(logp.unsqueeze(-1), batch["completion_mask"].view(group, -1, 1))

    def real_tokens(self, batch: dict, group: int, input_kind: str) -> int:
        return int(batch["completion_mask"].sum())

    def fingerprint(self, records: list[RankRecord]) -> str:
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        for r in records:
            h.update(json.dumps([r.numeric, r.categorical, r.items]).encode())
        return h.hexdigest()

    def save(self, module: RankerModel, folder: Path, weights: dict | None = None) -> None:
        with atomic_folder(Path(folder), "model") as tmp:
            module.save_pretrained(tmp, state_dict=weights)


def load_ranker(path: str) -> RankerModel:
    """A ranker folder's module, its settings and item table with it (``module.settings``, ``module.items``)."""
    return ItemRanker(None, {}, []).load(path)


def context_features(module: RankerModel, contexts: list[dict], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(numeric (B, ·), hashed categorical (B, ·)) of contexts (feature dicts), as ``forward`` takes them."""
    s = module.settings
    feats = [_columns(ctx, s["context_numeric"], s["context_categorical"], s["buckets"], where) for ctx in contexts]
    return (torch.tensor([f[0] for f in feats], dtype=torch.float32).view(len(contexts), -1),
            torch.tensor([f[1] for f in feats], dtype=torch.long).view(len(contexts), -1))


def score_contexts(module: RankerModel, contexts: list[dict], where: str) -> torch.Tensor:
    """Scores (B, items) of every item of the module's table for each context (a feature dict),
    for evaluation outside training; ``where`` names the contexts' source in errors."""
    numeric, categorical = context_features(module, contexts, where)
    n = len(module.items)
    items = torch.arange(n).repeat_interleave(len(contexts))  # grouped by candidate, as forward wants
    with torch.no_grad():
        return module(numeric, categorical, items).float().view(n, len(contexts)).T


def _read_folder(path: str) -> tuple[dict, list[dict]]:
    folder = Path(path)
    try:
        settings = json.loads((folder / SETTINGS).read_text())
        lines = (folder / ITEMS).read_text().splitlines()
    except (OSError, ValueError):
        raise UserError(f"not an item_ranker folder: {SETTINGS} or {ITEMS} is missing or unreadable "
                        "(dpokit.policies.ranker.write_ranker makes one)", where=path) from None
    for key in _SIZES:
        if not isinstance(settings.get(key), int) or settings[key] < 1:
            raise UserError("must be a positive integer", where=str(folder / SETTINGS), field=key)
    items = []
    for row, line in enumerate(lines, 1):
        try:
            items.append(json.loads(line))
        except ValueError:
            raise UserError("not a JSON object", f"{folder / ITEMS}:{row}") from None
    return settings, items
