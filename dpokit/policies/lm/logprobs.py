"""The one place where a model turns token ids into completion log-probs.

Every loss, the reference cache, evaluation and the sampled-KL estimate go through
``completion_logps``, so speed work here serves all of them:

- the layout (``dpokit.policies.lm.layout``): by default each record's prompt is encoded once for all its
  responses, and short records are packed into the padding of long ones;
- the LM head and the fp32 log-softmax run only at completion positions, in chunks of
  ``Options.chunk`` positions, each recomputed in the backward pass (activation
  checkpointing), so the full tokens × vocabulary logits are never held at once.

Whatever the options, the output is the same ``Logps``, laid out as the padded rows of
``data.collate`` from the batch's first completion column on.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.utils.checkpoint import checkpoint

from dpokit.logps import Logps
from dpokit.policies.lm.layout import Plan, padded_plan, shared_plan

log = logging.getLogger(__name__)
BLOCK_MASK_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4-D mask


@dataclass(frozen=True)
class Options:
    """How log-probs are computed; every choice gives the same values (to float rounding)."""

    chunk: int = 1024
    """Completion positions per LM-head + log-softmax chunk (recomputed in backward); 0: all at once."""
    share_prompt: bool = True
    """Encode each record's prompt once for all its responses (block attention mask)."""
    pack: bool = True
    """Pack several records into one row (block-diagonal mask, position ids restarting)."""
    alignment: str = "none"
    """Also each position's log Σ_v π(v)² (``sampled``) or log max_v π(v) (``greedy``), in ``Logps.align``."""


FAST = Options()


def _base(model):
    """The HF causal LM inside DDP and PEFT wrappers (for its config and LM head)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


_noted: set = set()


def _block_masks_ok(model) -> bool:
    impl = getattr(_base(model).config, "_attn_implementation", None)
    if impl in BLOCK_MASK_ATTENTION:
        return True
    if impl not in _noted:
        _noted.add(impl)
        log.info("attention %r takes no custom 4-D mask: prompts are not shared, rows not packed", impl)
    return False


def plan(model, batch: dict, group_size: int, options: Options) -> Plan:
    """Where the batch's completion tokens go in the model's rows (see ``dpokit.policies.lm.layout``)."""
    if (options.share_prompt or options.pack) and _block_masks_ok(model):
        return shared_plan(batch, group_size, options.pack, options.share_prompt)
    return padded_plan(batch)


def sharded(model) -> bool:
    """Parameters split across processes (FSDP, DeepSpeed ZeRO-3): outside the model's own
    forward its LM head's weight is a shard (an FSDP2 DTensor, an empty ZeRO-3 placeholder), so
    the head may only run inside the forward."""
    if isinstance(model, (FSDPModule, FullyShardedDataParallel)):
        return True
    first = next(getattr(model, "module", model).parameters(), None)
    return first is not None and hasattr(first, "ds_id")  # ZeRO-3 tags its partitioned parameters


def _inputs(model, p: Plan) -> dict:
    """The model's inputs; a 4-D block mask becomes additive (0 / most negative), in the dtype the
    attention scores take. SDPA keeps the mask it is given for backward: given booleans it saves
    a converted copy in every layer, given the additive mask in its own dtype it saves this one
    tensor for all layers (about 4 MB per layer for 4 rows of 512 tokens in fp32)."""
    inputs = dict(p.inputs)
    see = inputs["attention_mask"]
    if see.dim() == 4:
        impl = _base(model).config._attn_implementation
        dtype = torch.float32 if impl == "eager" else _score_dtype(model, see.device)
        inputs["attention_mask"] = torch.zeros(see.shape, dtype=dtype, device=see.device).masked_fill(
            ~see, torch.finfo(dtype).min)
    return inputs


def _score_dtype(model, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(_base(model).parameters()).dtype


@contextlib.contextmanager
def _grouped_query_attention(model, device: torch.device):
    """On CPU, let SDPA attend with grouped key/value heads as they are, instead of transformers
    copying each key/value head once per query head first: the same values (to float rounding
    in the gradients), about a fifth less attention time and two fewer (rows, heads, T, d)
    tensors kept per layer. transformers does this only without a mask, because CUDA's masked
    kernels would fall back to the slow path; CPU's flash kernel takes a mask with grouped heads.
    Not under gradient checkpointing, whose recomputation in backward runs outside this block."""
    base = _base(model)
    cfg = base.config
    grouped = getattr(cfg, "num_key_value_heads", None) not in (None, getattr(cfg, "num_attention_heads", None))
    if (device.type != "cpu" or cfg._attn_implementation != "sdpa" or not grouped or _FORCE_GQA in os.environ
            or _checkpointing(base)):
        yield
        return
    os.environ[_FORCE_GQA] = "1"  # read by transformers' SDPA attention at each call
    try:
        yield
    finally:
        del os.environ[_FORCE_GQA]


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def _checkpointing(model) -> bool:
    model = _base(model)  # the wrappers may not forward the newer name, and the older one warns
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers 5's name
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


def _hidden(model, p: Plan) -> tuple[torch.Tensor, torch.nn.Module]:
    """(K, d) final hidden states (after the last norm) at the positions that predict each token,
    and the LM head to apply to them.

    The model is called as a whole (so DDP and PEFT wrappers see their forward), keeping the
    logits of one position only, and the last hidden state is read from its outputs. Under a
    sharding engine the head cannot run outside the forward (see ``sharded``): the forward then
    returns the logits of every position, the (K, V) logits at completion positions stand in for
    the hidden states, and the head is the identity (the forward has applied any logit transform,
    see ``_head``). That costs one (rows × length × V) logits tensor, which the chunked path
    avoids; the log-softmax stays in fp32 chunks either way.
    """
    inputs = _inputs(model, p)
    if sharded(model):
        with _grouped_query_attention(model, inputs["input_ids"].device):
            logits = model(**inputs, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1])[p.src], torch.nn.Identity()
    keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    with _grouped_query_attention(model, inputs["input_ids"].device):
        out = model(**inputs, use_cache=False, output_hidden_states=True, **keep)
    hidden = out.hidden_states[-1]
    return hidden.reshape(-1, hidden.shape[-1])[p.src], _head(model)


def _head(model):
    """The LM head with whatever the model does to its logits after it: Gemma 2/3 soft-cap them
    (cap·tanh(z/cap)), Cohere multiplies by ``logit_scale``, Granite divides by
    ``logits_scaling``. Reading hidden states and applying the head here would otherwise give
    other log-probs than the model's own forward."""
    base = _base(model)
    linear, cfg = base.get_output_embeddings(), base.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    scale, divide = getattr(cfg, "logit_scale", None), getattr(cfg, "logits_scaling", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    if not (scale or divide or cap):
        return linear

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden)
        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return head


def _token_logps(head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _aligned_token_logps(head, hidden: torch.Tensor, labels: torch.Tensor, alignment: str) -> torch.Tensor:
    """(K, 2): each position's log π(y_t) and its alignment term (not differentiated), from one
    pass over the logits."""
    log_probs = torch.log_softmax(head(hidden).float(), dim=-1)
    picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    detached = log_probs.detach()
    term = torch.logsumexp(2 * detached, dim=-1) if alignment == "sampled" else detached.max(dim=-1).values
    return torch.stack([picked, term], dim=-1)


def _token_kl(head, hidden: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π) per position from the reference's log-distributions (K, V)."""
    log_probs = torch.log_softmax(head(hidden).float(), dim=-1)
    return (ref.exp() * (ref - log_probs)).sum(-1)


def _chunked(fn, head, hidden: torch.Tensor, other: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn`` over ``chunk`` positions at a time; with autograd on, each chunk's logits are
    recomputed in backward instead of kept."""
    if chunk <= 0 or hidden.shape[0] <= chunk:
        return fn(head, hidden, other)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = [checkpoint(fn, head, h, o, use_reentrant=False) if grad else fn(head, h, o)
             for h, o in zip(hidden.split(chunk), other.split(chunk))]
    return torch.cat(parts)


def _scatter(values: torch.Tensor, p: Plan) -> torch.Tensor:
    """(K,) values into the (N, T') output, zero elsewhere."""
    out = values.new_zeros(p.mask.numel())
    return out.index_copy(0, p.dst, values).view(p.mask.shape)


def _grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    return values.view(group_size, values.shape[0] // group_size, -1)


def completion_logps(model, batch: dict[str, torch.Tensor], group_size: int,
                     ref_log_probs: torch.Tensor | None = None, options: Options = FAST) -> Logps:
    """Per-token log π(y_t | x, y_<t) over completion tokens, log-softmax in fp32.

    ``batch`` is the output of ``data.collate``: (G·B, T) rows grouped by response. Returns
    ``Logps`` of shape (G, B, T'), T' counted from the batch's first completion column. Given
    the reference's full log-distributions (``completion_log_probs`` of the same batch), also
    the per-token KL(π_ref ‖ π) in ``kl``.
    """
    p = plan(model, batch, group_size, options)
    hidden, head = _hidden(model, p)
    align = None
    if options.alignment == "none":
        tokens = _scatter(_chunked(_token_logps, head, hidden, p.labels, options.chunk), p)
    else:
        fn = functools.partial(_aligned_token_logps, alignment=options.alignment)
        both = _chunked(fn, head, hidden, p.labels, options.chunk)
        tokens, align = _scatter(both[:, 0], p), _grouped(_scatter(both[:, 1], p), group_size)
    kl = None
    if ref_log_probs is not None:
        ref = ref_log_probs.reshape(-1, ref_log_probs.shape[-1])[p.dst]
        kl = _grouped(_scatter(_chunked(_token_kl, head, hidden, ref, options.chunk), p), group_size)
    return Logps(_grouped(tokens, group_size), _grouped(p.mask, group_size), kl, align=align)


def completion_log_probs(model, batch: dict[str, torch.Tensor], group_size: int = 1,
                         options: Options = FAST) -> torch.Tensor:
    """The full fp32 log-distributions (N, T', V) at completion positions (token-level losses);
    zero at positions that are not completion tokens."""
    p = plan(model, batch, group_size, options)
    hidden, head = _hidden(model, p)
    log_probs = torch.log_softmax(head(hidden).float(), dim=-1)
    out = log_probs.new_zeros(p.mask.numel(), log_probs.shape[-1]).index_copy(0, p.dst, log_probs)
    return out.view(*p.mask.shape, -1)


def logps_from_log_probs(log_probs: torch.Tensor, batch: dict[str, torch.Tensor], group_size: int) -> Logps:
    """``Logps`` of the batch's completion tokens read from full log-distributions."""
    ids, cmask = batch["input_ids"], batch["completion_mask"]
    first = ids.shape[1] - log_probs.shape[1]
    labels, mask = ids[:, first:], cmask[:, first:]
    token_logps = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
    return Logps(_grouped(token_logps, group_size), _grouped(mask, group_size))
