"""A loss on batches of records: the policy's (and reference's) log-probs, the loss, and its
metrics over a whole dataset. Training steps on it (``dpokit.train.loop``); evaluation reports
it on held-out pairs (``dpokit.eval.evaluate``), which imports it, not the loop.

Nothing here looks at a loss's name: the loss spec says which records it takes, whether it
needs the reference's full distributions (token-level KL), and what its batch loss averages over.
"""

from __future__ import annotations

import torch

from dpokit.config import LossConfig
from dpokit.losses import LossContext, LossSpec
from dpokit.policies.base import Policy, response_count
from dpokit.train import engines
from dpokit.train.batches import eval_batches
from dpokit.train.metrics import MetricSums, batch_metrics


def make_batch(kind: Policy, records: list, indices: list[int], dataset: str, device) -> dict:
    batch = kind.batch(records, indices, device)
    batch["index"], batch["dataset"] = torch.tensor(indices), dataset
    return batch


def unit_count(spec: LossSpec, batch: dict) -> int:
    """What the batch loss is averaged over: examples, or the responses' positions (tokens)."""
    if spec.unit == "token":
        return int(batch["completion_mask"].sum())
    return batch["weights"].shape[0]


def forward_loss(spec: LossSpec, loss_cfg: LossConfig, kind: Policy, policy, reference, batch: dict, group: int,
                 autocast, state: dict, gather=None):
    """Policy (and reference) log-probs of a batch, then the loss's per-example output,
    weighted by each record's weight. ``gather`` concatenates a tensor over processes (training
    steps only: evaluation shards may differ in size, so their statistics stay per batch)."""
    ref = reference.logps(batch, group, full=spec.token_kl) if reference is not None else None
    with autocast():
        pol = kind.logps(policy, batch, group, ref)
    ctx = LossContext(batch.get("labels"), state, policy.training, ties=batch.get("ties"))
    if gather is not None:
        ctx.gather = gather
    out = spec.fn(pol, ref, loss_cfg, ctx)
    out.losses = out.losses * batch["weights"]
    return pol, ref, out


@torch.no_grad()
def dataset_metrics(spec: LossSpec, loss_cfg: LossConfig, batch_size: int, kind: Policy, policy, reference,
                    records: list, autocast, accelerator, state: dict | None = None,
                    subset: list[int] | None = None) -> dict[str, float]:
    """The loss and its metrics (reward accuracy, margins...) over a whole dataset, each averaged
    exactly; on several processes each takes every P-th record and the sums are gathered.
    ``subset``: only these records (one source's), still indexed as in ``records`` (the cached
    reference looks values up by index)."""
    was_training = policy.training
    policy.eval()
    group = response_count(records)
    sums = MetricSums()
    rows = subset if subset is not None else range(len(records))
    batches = [[rows[i] for i in ix] for ix in eval_batches(len(rows), batch_size, accelerator.num_processes,
                                                            accelerator.process_index)]
    extra = engines.stand_ins(batches, accelerator)  # before any (collective) forward pass
    for indices in batches:
        batch = make_batch(kind, records, indices, "eval", accelerator.device)
        pol, ref, out = forward_loss(spec, loss_cfg, kind, policy, reference, batch, group, autocast, state or {})
        sums.add("loss", out.losses.sum(), unit_count(spec, batch))
        sums.merge(batch_metrics(spec.input_kind, pol, ref, out))
    for indices in extra:  # outputs dropped: as many forward passes as the busiest process
        batch = make_batch(kind, records, indices, "eval", accelerator.device)
        forward_loss(spec, loss_cfg, kind, policy, reference, batch, group, autocast, state or {})
    policy.train(was_training)
    return sums.gathered(accelerator).means()
