"""Secure aggregation (SecAgg+) in dpokit federated, on Flower's real simulation engine: two tiny
clients, one round. The global adapter is the record-weighted FedAvg mean of the clients' adapters to
within SecAgg+'s quantisation, and the strategy never holds one client's adapter: every result it
receives carries the same recovered mean."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("opacus")

from flwr.common import parameters_to_ndarrays  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from dpokit.cli import main  # noqa: E402
from dpokit.config import load_config  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from dpokit.federated.secure import CLIPPING_RANGE, QUANTIZATION_RANGE  # noqa: E402
from dpokit.federated.server import RoundKeeper  # noqa: E402
from helpers import tiny_model_dir  # noqa: E402
from helpers.task import pairs, write  # noqa: E402

SIZES = (8, 16)
MAX_WEIGHT = 16.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secagg")
    base = tiny_model_dir(tmp)
    files = [write(tmp / f"client{i}.jsonl", pairs(n, seed=10 + i)) for i, n in enumerate(SIZES)]
    cfg = load_config(None, {"model.path": str(base), "federated.clients": ",".join(map(str, files)),
                             "federated.rounds": 1, "federated.local_steps": 2, "federated.cpus": 2,
                             "federated.secure_aggregation": True, "federated.secagg_max_weight": MAX_WEIGHT,
                             "lora.r": 4, "lora.alpha": 8, "train.batch_size": 4, "train.lr": 1e-2,
                             "train.output": str(tmp / "out"), "train.registry": str(tmp / "registry"),
                             "data.max_length": 64, "data.max_prompt_length": 32}, root=FederatedConfig)
    seen = []
    original = RoundKeeper.aggregate_fit

    def watched(self, server_round, results, failures):  # what the strategy is handed, as it is handed
        seen.append([parameters_to_ndarrays(res.parameters) for _, res in results])
        return original(self, server_round, results, failures)

    RoundKeeper.aggregate_fit = watched
    try:
        result = run_federated(cfg)
    finally:
        RoundKeeper.aggregate_fit = original
    clients = [load_file(str(tmp / "out" / "clients" / f"client-{i}" / "round-1" / "run" / "final" /
                             "adapter_model.safetensors")) for i in range(len(SIZES))]
    return tmp, result, clients, seen


def _bound() -> float:
    """Each client's w·θ is stochastically rounded to a step of 2·8/2²² (Flower's quantiser); the sum
    of two such errors, divided by Σw = 8/16 + 16/16 = 1.5, bounds the error of the mean; plus the
    float32 the adapter is saved in."""
    return len(SIZES) * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) / (sum(SIZES) / MAX_WEIGHT) + 1e-6


def test_global_adapter_is_the_weighted_mean_within_quantisation(run):
    _, result, clients, _ = run
    glob = load_file(str(result.final / "adapter_model.safetensors"))
    assert max(float(abs(clients[0][k] - clients[1][k]).max()) for k in glob) > 1e-3  # they trained apart
    assert _bound() < 1e-5
    for key in glob:
        expected = sum(n * c[key].astype("float64") for n, c in zip(SIZES, clients)) / sum(SIZES)
        assert abs(glob[key] - expected).max() <= _bound(), key


def test_the_strategy_never_holds_one_clients_adapter(run):
    _, result, clients, seen = run
    (handed,) = seen  # one round
    names = sorted(clients[0])
    assert len(handed) == len(SIZES)
    for arrays in handed:  # every result carries the same recovered mean...
        for a, b in zip(arrays, handed[0]):
            np.testing.assert_array_equal(a, b)
    for own in clients:  # ...which is no client's own adapter
        assert max(float(abs(a - own[n]).max()) for a, n in zip(handed[0], names)) > 1e-4
    (entry,) = result.rounds
    assert {r["sent"] for r in entry["received"]} == {"masked (SecAgg+)"}
    assert entry["version"]  # the round is registered as without secure aggregation


def test_secure_aggregation_of_one_client_is_refused(tmp_path, capsys):
    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "a.jsonl", pairs(4, seed=0))
    capsys.readouterr()
    args = ["federated", "--model", str(base), "--output", str(tmp_path / "out"), "--secure-aggregation"]
    assert main(args + ["--clients", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "federated.secure_aggregation" in err and "at least 2" in err, err
    assert main(args + ["--clients", f"{data},{data},{data},{data}", "--fraction", "0.25"]) == 2
    assert "samples 1" in capsys.readouterr().err
