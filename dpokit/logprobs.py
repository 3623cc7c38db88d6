"""The one place where a model turns token ids into completion log-probs.

Every loss, the reference cache, evaluation and the sampled-KL estimate go through
``completion_logps``, so speed work here serves all of them.
"""

from __future__ import annotations

import inspect

import torch

from dpokit.losses import Logps


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def completion_logps(model, batch: dict[str, torch.Tensor], group_size: int) -> Logps:
    """Per-token log π(y_t | x, y_<t) over completion tokens, log-softmax in fp32.

    ``batch`` is the output of ``data.collate``: (G·B, T) rows grouped by response.
    Logits are only built from the first completion position on (``logits_to_keep``), since
    prompt positions never enter a loss. Returns ``Logps`` of shape (G, B, T').
    """
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    first = int(cmask.float().argmax(dim=1).min())  # earliest completion token in the batch
    keep = ids.shape[1] - first + 1  # logits at first−1 … T−1; the last one predicts nothing
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **kwargs).logits
    logits = logits[:, -keep:-1].float()
    labels = ids[:, first:]
    mask = cmask[:, first:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    token_logps = token_logps.masked_fill(~mask, 0.0)
    n = ids.shape[0] // group_size
    return Logps(token_logps.view(group_size, n, -1), mask.view(group_size, n, -1))
