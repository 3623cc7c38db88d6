"""Secure aggregation refuses what SecAgg+ would get wrong: a client holding more records than
``secagg_max_weight`` would have its weighted adapter clipped by the quantiser; it refuses to send,
SecAgg+ halts the round (too few clients left to unmask), and the run is an error, not a round
quietly missing a client."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("opacus")

from dpokit.config import load_config  # noqa: E402
from dpokit.errors import UserError  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from helpers import tiny_model_dir  # noqa: E402
from helpers.task import pairs, write  # noqa: E402


def test_a_client_over_max_weight_fails_the_run(tmp_path):
    base = tiny_model_dir(tmp_path)
    files = [write(tmp_path / f"client{i}.jsonl", pairs(n, seed=10 + i)) for i, n in enumerate((8, 16))]
    cfg = load_config(None, {"model.path": str(base), "federated.clients": ",".join(map(str, files)),
                             "federated.rounds": 1, "federated.local_steps": 1, "federated.cpus": 2,
                             "federated.secure_aggregation": True, "federated.secagg_max_weight": 10.0,
                             "lora.r": 4, "lora.alpha": 8, "train.batch_size": 4, "train.registry": "",
                             "train.output": str(tmp_path / "out"), "data.max_length": 64,
                             "data.max_prompt_length": 32}, root=FederatedConfig)
    with pytest.raises(UserError, match="round 1's secure aggregation halted"):
        run_federated(cfg)
    assert not (tmp_path / "out" / "global" / "round-1").exists()
