"""Where a dpokit DPO step's time and memory go, on the TRL benchmark's setting.

    python benchmarks/profile_step.py [--dtype fp32|bf16|auto] [--steps 4] [--batch-size 4]
                                      [--max-length 512] [--compile] [--no-profile]

Runs dpokit's ``train()`` on the first usable HH pairs (as ``trl_vs_dpokit.py`` does) and prints:

- each optimizer step's wall and CPU seconds;
- what autograd keeps for backward in step 1 (distinct storages, by shape and dtype, parameters
  apart: a parameter saved by a matmul is no extra memory);
- torch.profiler's table of one step (step 2), ops by self CPU time, unless ``--no-profile``.

``--compile`` compiles the decoder (``torch.compile``, inductor, dynamic shapes) to see whether
it pays for its compile time; the saved-tensor count is skipped then.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trl_vs_dpokit as bench  # noqa: E402  (the benchmark's data and run helpers)


class SavedTensors:
    """Bytes autograd keeps for backward while ``active``, by (shape, dtype, is a parameter)."""

    def __init__(self):
        self.active, self.seen, self.params = False, set(), None
        self.bytes: collections.Counter = collections.Counter()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            if self.params is None:
                self.params = {p.untyped_storage().data_ptr() for p in gc.get_objects()
                               if isinstance(p, torch.nn.Parameter)}
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.seen:
                self.seen.add(ptr)
                self.bytes[(tuple(t.shape), str(t.dtype).removeprefix("torch."), ptr in self.params)] += \
                    t.untyped_storage().nbytes()
        return t

    def report(self) -> str:
        mib = 2 ** 20
        total, params = sum(self.bytes.values()), sum(n for k, n in self.bytes.items() if k[2])
        lines = [f"kept for backward in step 1: {total / mib:.0f} MiB ({params / mib:.0f} MiB of it parameters, "
                 f"{(total - params) / mib:.0f} MiB activations)"]
        for (shape, dtype, param), n in self.bytes.most_common(16):
            lines.append(f"  {n / mib:8.1f} MiB  {dtype:9s}{'param' if param else '':6s}{shape}")
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="fp32", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    ap.add_argument("--no-profile", action="store_true", help="skip torch.profiler")
    args = ap.parse_args()

    from dpokit.policies.lm.load import embedded_smollm2, load_tokenizer

    model = str(embedded_smollm2())
    pairs = bench.usable_pairs(load_tokenizer(model), args.batch_size * args.steps, args.max_length)
    spec = {"model": model, "pairs": pairs, "tmp": tempfile.mkdtemp(), "steps": args.steps,
            "batch_size": args.batch_size, "max_length": args.max_length, "dtype": args.dtype,
            "dpokit": {"train.dtype": args.dtype}}
    if args.compile:
        import dpokit.policies.lm.policy as lm_policy

        load = lm_policy.load_model  # what the LM policy kind loads with
        lm_policy.load_model = lambda *a, **k: _compiled(load(*a, **k))

    saved, state, clock = SavedTensors(), {"step": 0, "profiler": None}, bench.StepClock()

    def on_step(*_):
        state["step"] += 1
        saved.active = state["step"] == 1
        if args.no_profile:
            return
        if state["step"] == 2:
            state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            state["profiler"].__enter__()
        elif state["step"] == 3:
            state["profiler"].__exit__(None, None, None)

    register_optimizer_step_post_hook(on_step)
    hooks = contextlib.nullcontext() if args.compile else torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t)
    with hooks:
        bench.run_dpokit(spec)
    print(json.dumps(bench.machine()))
    steps = clock.steps()
    print("step s:", [round(x, 2) for x in steps["step_s"]], " CPU s:", [round(x, 2) for x in steps["step_cpu_s"]])
    if not args.compile:
        print(saved.report())
    if state["profiler"] is not None:
        print(state["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                                     max_name_column_width=60))


def _compiled(model):
    model.model.compile(dynamic=True)
    return model


if __name__ == "__main__":
    main()
