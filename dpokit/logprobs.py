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


def _completion_logits(model, batch: dict[str, torch.Tensor]):
    """fp32 logits that predict tokens from the batch's first completion position on, with
    those tokens and their completion mask: (N, T', V), (N, T'), (N, T').

    Logits are only built from the first completion position on (``logits_to_keep``), since
    prompt positions never enter a loss.
    """
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    first = int(cmask.float().argmax(dim=1).min())  # earliest completion token in the batch
    keep = ids.shape[1] - first + 1  # logits at first−1 … T−1; the last one predicts nothing
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **kwargs).logits
    return logits[:, -keep:-1].float(), ids[:, first:], cmask[:, first:]


def _grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    return values.view(group_size, values.shape[0] // group_size, -1)


def completion_logps(model, batch: dict[str, torch.Tensor], group_size: int,
                     ref_log_probs: torch.Tensor | None = None) -> Logps:
    """Per-token log π(y_t | x, y_<t) over completion tokens, log-softmax in fp32.

    ``batch`` is the output of ``data.collate``: (G·B, T) rows grouped by response. Returns
    ``Logps`` of shape (G, B, T'). Given the reference's full log-distributions
    (``completion_log_probs`` of the same batch), also the per-token KL(π_ref ‖ π) in ``kl``.
    """
    logits, labels, mask = _completion_logits(model, batch)
    lse = torch.logsumexp(logits, dim=-1)
    token_logps = (logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse).masked_fill(~mask, 0.0)
    kl = None
    if ref_log_probs is not None:
        log_probs = logits - lse.unsqueeze(-1)
        kl = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(-1).masked_fill(~mask, 0.0)
        kl = _grouped(kl, group_size)
    return Logps(_grouped(token_logps, group_size), _grouped(mask, group_size), kl)


def completion_log_probs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The full fp32 log-distributions (N, T', V) at completion positions (token-level losses)."""
    logits, _, _ = _completion_logits(model, batch)
    return torch.log_softmax(logits, dim=-1)


def logps_from_log_probs(log_probs: torch.Tensor, batch: dict[str, torch.Tensor], group_size: int) -> Logps:
    """``Logps`` of the batch's completion tokens read from full log-distributions."""
    ids, cmask = batch["input_ids"], batch["completion_mask"]
    first = ids.shape[1] - log_probs.shape[1]
    labels, mask = ids[:, first:], cmask[:, first:]
    token_logps = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
    return Logps(_grouped(token_logps, group_size), _grouped(mask, group_size))
