"""Policies: the kinds of model dpokit trains, behind one interface (``base.Policy``), and the
reference strategies built on it (``reference``).

- ``causal_lm`` (``lm/``): any local Hugging Face causal LM, GGUF, LoRA (the default);
- ``linear_scorer`` (``scorer.py``): a linear model scoring candidate items for a context;
- ``item_ranker`` (``ranker.py``): a torch ranker over context and item feature columns;
- ``diffusion`` (``diffusion/``): a caption-conditioned diffusers UNet (Diffusion-DPO).
"""

from __future__ import annotations

import importlib

from dpokit.errors import UserError

KINDS = {"causal_lm": "dpokit.policies.lm.policy:CausalLM", "linear_scorer": "dpokit.policies.scorer:LinearScorer",
         "item_ranker": "dpokit.policies.ranker:ItemRanker",
         "diffusion": "dpokit.policies.diffusion.policy:DiffusionPolicy"}
"""Registered name -> where its class is (imported only when a run asks for it)."""


def build_policy_kind(cfg, spec):
    """The policy kind ``cfg.model.policy`` names, built from the run config; settings it cannot
    honour with the loss ``spec`` are refused here, before any model is loaded."""
    target = KINDS.get(cfg.model.policy)
    if target is None:
        raise UserError(f"unknown policy {cfg.model.policy!r} (known: {', '.join(KINDS)})", where="config",
                        field="model.policy")
    module, _, name = target.partition(":")
    kind = getattr(importlib.import_module(module), name).from_config(cfg)
    for bad, key, msg in kind.checks(spec):
        if bad:
            raise UserError(msg, where="config", field=key)
    return kind
