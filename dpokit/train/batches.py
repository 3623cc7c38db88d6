"""Which records each step sees, and the batches a reference precompute runs in."""

from __future__ import annotations

import math

import torch

from dpokit.train.checkpoint import TrainState


class BatchStream:
    """Record indices for each optimizer step: ``grad_accum`` consecutive slices of
    ``batch_size × processes`` from a per-epoch permutation seeded by (seed, epoch); process
    ``rank`` takes its own ``batch_size`` of each slice.

    A step of k micro-batches of b on P processes therefore sees exactly the records one
    batch of k·b·P would, and the position in the data is two integers, saved in every
    checkpoint. On several processes a step whose slice does not divide evenly is padded with
    the epoch's first records (as torch's DistributedSampler pads), so every process runs the
    same number of micro-batches.
    """

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int, processes: int = 1, rank: int = 0):
        self.n, self.b, self.k, self.seed = n, batch_size, grad_accum, seed
        self.processes, self.rank = processes, rank
        self.steps_per_epoch = math.ceil(n / (batch_size * grad_accum * processes))

    def _order(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def next_step(self, state: TrainState) -> list[list[int]]:
        if state.position >= self.n:
            state.epoch, state.position = state.epoch + 1, 0
        order = self._order(state.epoch)
        width = self.b * self.processes
        take = order[state.position: state.position + width * self.k]
        state.position += len(take)
        micro = []
        for i in range(0, len(take), width):
            part = take[i:i + width]
            part += (order * self.processes)[: -len(part) % self.processes]
            share = len(part) // self.processes
            micro.append(part[self.rank * share:(self.rank + 1) * share])
        return micro


def first_epoch_batches(stream: BatchStream) -> list[list[int]]:
    """This process's micro-batches of the first epoch, in training order."""
    state, batches = TrainState(), []
    for _ in range(stream.steps_per_epoch):
        batches += stream.next_step(state)
    return batches


def eval_batches(n: int, batch_size: int, processes: int = 1, rank: int = 0) -> list[list[int]]:
    """This process's evaluation batches: every P-th record, in slices of ``batch_size``."""
    mine = list(range(rank, n, processes))
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
