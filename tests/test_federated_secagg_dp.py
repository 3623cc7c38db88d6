"""Secure aggregation composed with client-side DP, on Flower's real simulation engine: each client
clips its update before SecAgg+ masks it and weighs 1, so with noise multiplier 0 the global adapter
is the start plus the plain mean of the clipped updates, to within SecAgg+'s quantisation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("opacus")

from safetensors.numpy import load_file  # noqa: E402

from dpokit.config import load_config  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from dpokit.federated.secure import CLIPPING_RANGE, QUANTIZATION_RANGE  # noqa: E402
from helpers import tiny_model_dir  # noqa: E402
from helpers.task import pairs, write  # noqa: E402

SIZES = (8, 16)
CLIP = 0.02


def test_clipped_updates_are_masked_and_averaged_unweighted(tmp_path):
    base = tiny_model_dir(tmp_path)
    files = [write(tmp_path / f"client{i}.jsonl", pairs(n, seed=10 + i)) for i, n in enumerate(SIZES)]
    cfg = load_config(None, {"model.path": str(base), "federated.clients": ",".join(map(str, files)),
                             "federated.rounds": 1, "federated.local_steps": 2, "federated.cpus": 2,
                             "federated.secure_aggregation": True, "federated.dp_clip": CLIP,
                             "federated.dp_noise": 0.0, "lora.r": 4, "lora.alpha": 8, "train.batch_size": 4,
                             "train.lr": 1e-2, "train.output": str(tmp_path / "out"), "train.registry": "",
                             "data.max_length": 64, "data.max_prompt_length": 32}, root=FederatedConfig)
    result = run_federated(cfg)
    out = tmp_path / "out"
    start = load_file(str(out / "global" / "round-0" / "adapter_model.safetensors"))
    names = sorted(start)
    trained = [load_file(str(out / "clients" / f"client-{i}" / "round-1" / "run" / "final" /
                             "adapter_model.safetensors")) for i in range(len(SIZES))]
    clipped = []
    for t in trained:  # Flower's flat clipping: the whole update scaled to norm ≤ C
        update = [t[n].astype("float64") - start[n] for n in names]
        norm = float(np.sqrt(sum(float((u ** 2).sum()) for u in update)))
        assert norm > CLIP  # the clipping acts
        clipped.append([u * CLIP / norm for u in update])
    glob = load_file(str(result.final / "adapter_model.safetensors"))
    # weights 1 each (max_weight 1): two rounding errors of 2·8/2²² over Σw = 2, plus float32
    bound = 2 * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) / 2 + 1e-6
    for k, name in enumerate(names):
        expected = start[name] + (clipped[0][k] + clipped[1][k]) / 2
        assert abs(glob[name] - expected).max() <= bound, name
    (entry,) = result.rounds
    assert [r["num_examples"] for r in entry["received"]] == [1, 1]  # under DP a client weighs 1
    assert {r["sent"] for r in entry["received"]} == {"masked (SecAgg+)"}
