"""The reference policy π_ref behind one interface, with three strategies.

- ``CopyReference``: a frozen model (a copy of the starting policy, or ``--ref-model``).
- ``AdapterReference``: the LoRA policy itself with its adapters switched off; for TR-DPO,
  ``MovingAdapterReference`` adds a dense weight delta per adapted layer that follows the adapter.
- ``LoggedReference``: no model; the logging policy's propensities that the records carry (a
  ranker's records made from a log), for a policy kind that has them (``logged_logps``).
- ``CachedReference``: log-probs computed once before training and stored on disk, keyed by
  hashes of the model weights, the policy kind's fingerprint of its encoder and the encoded
  data, and the settings; the reference model is then freed, so training holds one model.
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

from dpokit.errors import UserError
from dpokit.logps import Logps
from dpokit.policies.base import Policy, response_count

CACHE_FORMAT = 2


class CopyReference:
    """A frozen model of the policy's kind."""

    def __init__(self, model, kind: Policy, autocast: Callable[[], contextlib.AbstractContextManager],
                 sync_steps: int = 0, sync_alpha: float = 1.0):
        self.model, self.kind, self.autocast = model.eval().requires_grad_(False), kind, autocast
        self.sync_steps, self.sync_alpha = sync_steps, sync_alpha

    @property
    def moves(self) -> bool:
        """The reference follows the policy (TR-DPO), so checkpoints must hold its weights."""
        return self.sync_steps > 0

    @torch.no_grad()
    def after_step(self, policy, step: int) -> None:
        """TR-DPO (Gorbatovski et al. 2024, "Learn your reference model for real good alignment"):
        every ``sync_steps`` steps, θ_ref ← α·θ + (1 − α)·θ_ref (α = 1: a hard copy)."""
        if not self.moves or step % self.sync_steps:
            return
        ours, theirs = dict(self.model.named_parameters()), dict(policy.named_parameters())
        for name, param in ours.items():
            new = theirs[name].detach().to(param.dtype)
            param.copy_(new) if self.sync_alpha == 1 else param.lerp_(new, self.sync_alpha)  # copy: exact

    @torch.no_grad()
    def logps(self, batch: dict, group_size: int, full: bool = False) -> Logps:
        """``full``: with the full per-position distributions (``Logps.dist``), for token-level losses."""
        with self.autocast():
            return self.kind.logps(self.model, batch, group_size, full=full)


class AdapterReference:
    """Reads the policy at call time, so it always sees the prepared (wrapped) model."""

    def __init__(self, get_policy: Callable, kind: Policy, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.get_policy, self.kind, self.autocast = get_policy, kind, autocast

    @torch.no_grad()
    def logps(self, batch: dict, group_size: int, full: bool = False) -> Logps:
        policy = self.get_policy()
        with self.kind.adapters_off(policy), self.autocast():
            return self.kind.logps(policy, batch, group_size, full=full)

    def after_step(self, policy, step: int) -> None:
        """Nothing: this reference is the policy's own base weights."""


class MovingAdapterReference(AdapterReference):
    """TR-DPO on a LoRA policy: θ_ref = W₀ + Δ_ref per adapted layer, with the policy's θ = W₀ + s·B·A.
    As W₀ is shared and frozen, the update θ_ref ← α·θ + (1 − α)·θ_ref is exactly
    Δ_ref ← α·s·B·A + (1 − α)·Δ_ref. A mix of two low-rank products is not of rank r, so Δ_ref is
    dense (one out×in tensor per adapted layer, kept in fp32); it starts at 0, the reference of a
    fixed adapter strategy (the starting policy with its adapters off). ``model`` holds the deltas
    as parameters, so checkpoints save and restore them as they do a moving copy's weights."""

    def __init__(self, policy, kind: Policy, autocast: Callable[[], contextlib.AbstractContextManager],
                 sync_steps: int, sync_alpha: float):
        super().__init__(lambda: policy, kind, autocast)
        self.sync_steps, self.sync_alpha = sync_steps, sync_alpha
        self.layers = adapted_layers(policy)
        self.model = torch.nn.ParameterDict({
            key: torch.nn.Parameter(torch.zeros_like(layer.base_layer.weight, dtype=torch.float32),
                                    requires_grad=False)
            for key, layer in self.layers.items()})

    moves = True

    @torch.no_grad()
    def logps(self, batch: dict, group_size: int, full: bool = False) -> Logps:
        hooks = [layer.base_layer.register_forward_hook(_adds(self.model[key], layer.fan_in_fan_out))
                 for key, layer in self.layers.items()]
        try:
            return super().logps(batch, group_size, full)
        finally:
            for hook in hooks:
                hook.remove()

    @torch.no_grad()
    def after_step(self, policy, step: int) -> None:
        if step % self.sync_steps:
            return
        for key, layer in self.layers.items():
            new = layer.get_delta_weight("default").float()
            delta = self.model[key]
            delta.copy_(new) if self.sync_alpha == 1 else delta.lerp_(new, self.sync_alpha)


def adapted_layers(policy) -> dict:
    """The policy's LoRA layers by name (dots replaced: parameter names of a ParameterDict)."""
    from peft.tuners.lora import LoraLayer

    layers = {name.replace(".", "/"): m for name, m in policy.named_modules()
              if isinstance(m, LoraLayer) and "default" in m.lora_A}
    unsupported = sorted(n for n, m in layers.items() if not isinstance(m.base_layer, torch.nn.Linear)
                         and not m.fan_in_fan_out)
    if unsupported or not layers:
        raise UserError(f"a moving reference (TR-DPO) follows LoRA adapters on linear layers only, not on "
                        f"{', '.join(unsupported) or 'none'}", where="config", field="lora.target_modules")
    return layers


def _adds(delta: torch.Tensor, fan_in_fan_out: bool):
    """A forward hook adding x·Δᵀ to a layer's output (GPT-2's Conv1D stores its weight as in×out)."""
    def hook(module, inputs, output):
        weight = delta.T if fan_in_fan_out else delta
        return output + torch.nn.functional.linear(inputs[0].to(delta.dtype), weight).to(output.dtype)
    return hook


class LoggedReference:
    """The policy that logged the data as the reference, read from the records: the kind's
    ``logged_logps`` (the item_ranker's records made from a log carry each item's propensity)."""

    def __init__(self, kind: Policy):
        if not hasattr(kind, "logged_logps"):
            raise UserError(f"policy '{kind.name}' has no logged propensities to use as the reference",
                            where="config", field="train.ref")
        self.kind = kind

    def logps(self, batch: dict, group_size: int, full: bool = False) -> Logps:
        assert not full, "logged propensities hold no full distributions (validate() refuses this)"
        return self.kind.logged_logps(batch, group_size)

    def after_step(self, policy, step: int) -> None:
        """Nothing: the logging policy does not move."""


class CachedReference:
    """Per-position reference log-probs of every record, looked up by dataset name and record index."""

    def __init__(self, values: dict[str, list[list[torch.Tensor]]]):
        self.values = values  # values[dataset][record][response] -> (positions,) float32

    def logps(self, batch: dict, group_size: int, full: bool = False) -> Logps:
        assert not full, "a cached reference holds no full distributions (validate() refuses this)"
        index, values = batch["index"].tolist(), self.values[batch["dataset"]]
        mask = batch["completion_mask"]
        first = int(mask.float().argmax(dim=1).min())
        mask = mask[:, first:]
        tokens = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        tokens[mask] = torch.cat([values[i][g] for g in range(group_size) for i in index]).to(mask.device)
        n = len(index)
        return Logps(tokens.view(group_size, n, -1), mask.view(group_size, n, -1))

    def after_step(self, policy, step: int) -> None:
        """Nothing: cached log-probs do not move (validate() refuses TR-DPO with them)."""


def model_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
                 if tensor.numel() else b"")
    return h.hexdigest()


def cache_key(model_digest: str, fingerprint: str, settings: dict) -> str:
    """``fingerprint``: the policy kind's digest of its encoder and the encoded records."""
    parts = [f"v{CACHE_FORMAT}", model_digest, fingerprint, json.dumps(settings, sort_keys=True)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def compute_reference_logps(kind: Policy, model, records: list, batches: list[list[int]], autocast: Callable,
                            progress: Iterable | None = None) -> dict[int, list[torch.Tensor]]:
    """One no-grad pass over the records named in ``batches``: the log-probs at every position of
    every response, by record index. Running the batches training will run makes each value
    bitwise what a live reference would give at that step, in bf16 too (a different batch
    layout changes bf16 rounding)."""
    model.eval()
    if not batches:
        return {}
    group = response_count(records)
    device = next(model.parameters()).device
    out: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for indices in batches:
            batch = kind.batch(records, indices, device)
            with autocast():
                lp = kind.logps(model, batch, group)
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
