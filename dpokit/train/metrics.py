"""Exact metric averages and the metrics.jsonl log.

Metrics are kept as (sum, count) so that averages over several micro-batches, steps or a
whole eval set weigh every example (or token) once, never averaging averages.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from dpokit.data.kinds import response_names
from dpokit.logps import Logps
from dpokit.losses import LossOutput
from dpokit.store.atomic import write_text_atomic


class MetricSums:
    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)

    def add(self, name: str, total: float, count: float) -> None:
        self.sums[name] += float(total)
        self.counts[name] += float(count)

    def add_values(self, name: str, values: torch.Tensor) -> None:
        """Add per-example values; NaN marks an example the metric does not apply to."""
        values = values.detach().float()
        values = values[~values.isnan()]
        if values.numel():
            self.add(name, values.sum(), values.numel())

    def merge(self, other: "MetricSums") -> None:
        for k in other.sums:
            self.add(k, other.sums[k], other.counts[k])

    def gathered(self, accelerator) -> "MetricSums":
        """The sums and counts of every process added together (each process may hold
        different metric names, e.g. KTO's per-label rewards)."""
        if accelerator.num_processes == 1:
            return self
        from accelerate.utils import gather_object

        total = MetricSums()
        for sums, counts in gather_object([(dict(self.sums), dict(self.counts))]):
            for k in sums:
                total.add(k, sums[k], counts[k])
        return total

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}


def batch_metrics(kind: str, policy: Logps, reference: Logps | None, out: LossOutput) -> MetricSums:
    """What every run logs: the loss's own metrics, log-probs, and an approximate KL."""
    m = MetricSums()
    for name, values in out.metrics.items():
        m.add_values(name, values)
    names = response_names(kind, policy.tokens.shape[0])
    for g, name in enumerate(names):
        m.add_values(f"logps/{name}", policy.sum[g])
        m.add_values(f"logps/{name}_per_token", policy.mean[g])
    if reference is not None:
        # k3 estimator per token, exp(d) − d − 1 with d = log π_ref − log π: ≥ 0, and unbiased
        # for KL(π‖π_ref) when tokens are sampled from π; on dataset tokens an approximation.
        real = slice(0, len(names))
        d = (reference.tokens[real] - policy.tokens[real].detach())[policy.mask[real]]
        m.add("kl/approx", (torch.expm1(d) - d).sum(), d.numel())
    return m


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, lines after the checkpoint's step are cut, and so
    is a line a killed run left half-written."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            write_text_atomic(path, "")
        elif path.exists():
            keep = [ln for ln in path.read_text(errors="replace").splitlines()
                    if (record := _parse(ln)) is not None and record.get("step", 0) <= resume_step]
            write_text_atomic(path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
