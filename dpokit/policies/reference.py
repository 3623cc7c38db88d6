"""The reference policy π_ref behind one interface, with three strategies.

- ``CopyReference``: a frozen model (a copy of the starting policy, or ``--ref-model``).
- ``AdapterReference``: the LoRA policy itself with its adapters switched off.
- ``CachedReference``: log-probs computed once before training and stored on disk, keyed by
  hashes of the model weights, the tokenizer, the tokenized data and the settings; the
  reference model is then freed, so training holds one model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file

from dpokit.data.tokenize import TokenizedRecord, collate
from dpokit.logps import Logps
from dpokit.policies.lm.logprobs import FAST, Options, completion_log_probs, completion_logps

CACHE_FORMAT = 1


class CopyReference:
    def __init__(self, model, autocast: Callable[[], contextlib.AbstractContextManager], options: Options = FAST):
        self.model, self.autocast, self.options = model.eval().requires_grad_(False), autocast, options

    @torch.no_grad()
    def logps(self, batch: dict, group_size: int) -> Logps:
        with self.autocast():
            return completion_logps(self.model, batch, group_size, options=self.options)

    @torch.no_grad()
    def log_probs(self, batch: dict, group_size: int) -> torch.Tensor:
        """Full per-position log-distributions, for token-level losses."""
        with self.autocast():
            return completion_log_probs(self.model, batch, group_size, self.options)


class AdapterReference:
    """Reads the policy at call time, so it always sees the prepared (wrapped) model."""

    def __init__(self, get_policy: Callable, autocast: Callable[[], contextlib.AbstractContextManager],
                 options: Options = FAST):
        self.get_policy, self.autocast, self.options = get_policy, autocast, options

    @torch.no_grad()
    def logps(self, batch: dict, group_size: int) -> Logps:
        policy = self.get_policy()
        with policy.disable_adapter(), self.autocast():
            return completion_logps(policy, batch, group_size, options=self.options)

    @torch.no_grad()
    def log_probs(self, batch: dict, group_size: int) -> torch.Tensor:
        policy = self.get_policy()
        with policy.disable_adapter(), self.autocast():
            return completion_log_probs(policy, batch, group_size, self.options)


class CachedReference:
    """Per-token reference log-probs of every record, looked up by dataset name and record index."""

    def __init__(self, values: dict[str, list[list[torch.Tensor]]]):
        self.values = values  # values[dataset][record][response] -> (len(completion),) float32

    def logps(self, batch: dict, group_size: int) -> Logps:
        index, values = batch["index"].tolist(), self.values[batch["dataset"]]
        mask = batch["completion_mask"]
        first = int(mask.float().argmax(dim=1).min())
        mask = mask[:, first:]
        tokens = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        tokens[mask] = torch.cat([values[i][g] for g in range(group_size) for i in index]).to(mask.device)
        n = len(index)
        return Logps(tokens.view(group_size, n, -1), mask.view(group_size, n, -1))


def model_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
                 if tensor.numel() else b"")
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.chat_template,
                          tokenizer.all_special_tokens], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def data_hash(records: list[TokenizedRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt_ids, r.completion_ids]).encode())
    return h.hexdigest()


def cache_key(model_digest: str, tokenizer, records: list[TokenizedRecord], settings: dict) -> str:
    parts = [f"v{CACHE_FORMAT}", model_digest, tokenizer_hash(tokenizer), data_hash(records),
             json.dumps(settings, sort_keys=True)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def compute_reference_logps(model, records: list[TokenizedRecord], batches: list[list[int]], pad_id: int,
                            autocast: Callable, progress: Iterable | None = None,
                            options: Options = FAST) -> dict[int, list[torch.Tensor]]:
    """One no-grad pass over the records named in ``batches``: per-token log-probs of every
    completion, by record index. Running the batches training will run makes each value
    bitwise what a live reference would give at that step, in bf16 too (a different batch
    layout changes bf16 rounding)."""
    model.eval()
    if not batches:
        return {}
    group = len(records[batches[0][0]].completion_ids)
    device = next(model.parameters()).device
    out: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for indices in batches:
            batch = {k: v.to(device) for k, v in collate([records[i] for i in indices], pad_id).items()}
            with autocast():
                lp = completion_logps(model, batch, group, options=options)
            for b, i in enumerate(indices):
                out.setdefault(i, [lp.tokens[g, b][lp.mask[g, b]].cpu() for g in range(group)])
            if progress is not None:
                progress.update(len(indices))
    return out


def save_cache(path: Path, values: list[list[torch.Tensor]]) -> None:
    flat = [t for rec in values for t in rec]
    lengths = torch.tensor([len(t) for t in flat], dtype=torch.long)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"logps": torch.cat(flat).contiguous(), "lengths": lengths}, str(tmp),
              metadata={"group": str(len(values[0])), "format": str(CACHE_FORMAT)})
    os.replace(tmp, path)


def load_cache(path: Path) -> list[list[torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        group = int(f.metadata()["group"])
    data = load_file(str(path))
    flat = list(torch.split(data["logps"], data["lengths"].tolist()))
    return [flat[i:i + group] for i in range(0, len(flat), group)]
