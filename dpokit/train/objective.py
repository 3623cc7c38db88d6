"""A loss on batches of records: the policy's (and reference's) log-probs, the loss, and its
metrics over a whole dataset. Training steps on it (``dpokit.train.loop``); evaluation reports
it on held-out pairs (``dpokit.eval.evaluate``), which imports it, not the loop.

Nothing here looks at a loss's name: the loss spec says which records it takes, whether it
needs the reference's full distributions (token-level KL), and what its batch loss averages over.
"""

from __future__ import annotations

import torch

from dpokit.config import RunConfig
from dpokit.data import TokenizedRecord, collate
from dpokit.losses import LossContext, LossSpec
from dpokit.policies.lm.logprobs import completion_logps, logps_from_log_probs
from dpokit.train import engines
from dpokit.train.batches import eval_batches
from dpokit.train.metrics import MetricSums, batch_metrics
from dpokit.train.setup import logprob_options


def make_batch(records: list[TokenizedRecord], indices: list[int], pad_id: int, dataset: str, device) -> dict:
    batch = {k: v.to(device) for k, v in collate([records[i] for i in indices], pad_id).items()}
    batch["index"], batch["dataset"] = torch.tensor(indices), dataset
    return batch


def unit_count(spec: LossSpec, batch: dict, group_size: int) -> int:
    """What the batch loss is averaged over: examples, or completion tokens."""
    if spec.unit == "token":
        return int(batch["completion_mask"].sum())
    return batch["input_ids"].shape[0] // group_size


def forward_loss(spec: LossSpec, cfg: RunConfig, policy, reference, batch: dict, group: int, autocast,
                 state: dict, gather=None):
    """Policy (and reference) log-probs of a batch, then the loss's per-example output,
    weighted by each record's weight. ``gather`` concatenates a tensor over processes (training
    steps only: evaluation shards may differ in size, so their statistics stay per batch)."""
    ref_log_probs = reference.log_probs(batch, group) if spec.token_kl else None
    with autocast():
        pol = completion_logps(policy, batch, group, ref_log_probs, logprob_options(cfg))
    if ref_log_probs is not None:
        ref = logps_from_log_probs(ref_log_probs, batch, group)
    else:
        ref = reference.logps(batch, group) if reference is not None else None
    ctx = LossContext(batch.get("labels"), state, policy.training)
    if gather is not None:
        ctx.gather = gather
    out = spec.fn(pol, ref, cfg.loss, ctx)
    out.losses = out.losses * batch["weights"]
    return pol, ref, out


@torch.no_grad()
def dataset_metrics(spec: LossSpec, cfg: RunConfig, policy, reference, records: list[TokenizedRecord],
                    pad_id: int, autocast, accelerator, state: dict | None = None) -> dict[str, float]:
    """The loss and its metrics (reward accuracy, margins...) over a whole dataset, each averaged
    exactly; on several processes each takes every P-th record and the sums are gathered."""
    was_training = policy.training
    policy.eval()
    group = len(records[0].completion_ids)
    sums = MetricSums()
    batches = eval_batches(len(records), cfg.train.batch_size, accelerator.num_processes,
                           accelerator.process_index)
    extra = engines.stand_ins(batches, accelerator)  # before any (collective) forward pass
    for indices in batches:
        batch = make_batch(records, indices, pad_id, "eval", accelerator.device)
        pol, ref, out = forward_loss(spec, cfg, policy, reference, batch, group, autocast, state or {})
        sums.add("loss", out.losses.sum(), unit_count(spec, batch, group))
        sums.merge(batch_metrics(spec.input_kind, pol, ref, out))
    for indices in extra:  # outputs dropped: as many forward passes as the busiest process
        batch = make_batch(records, indices, pad_id, "eval", accelerator.device)
        forward_loss(spec, cfg, policy, reference, batch, group, autocast, state or {})
    policy.train(was_training)
    return sums.gathered(accelerator).means()
