"""dpokit federated on Flower's real simulation engine (Ray), two tiny clients, one FedProx round: the
global adapter is the record-weighted mean of the clients' adapters, the server receives only
adapter arrays, counts and metric scalars, the clients' files are opened only in the clients'
processes, and the round is a registry version. Plus the privacy accountant against hand values."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("opacus")

from safetensors.numpy import load_file  # noqa: E402

from dpokit.cli import main  # noqa: E402
from dpokit.config import load_config  # noqa: E402
from dpokit.federated import FederatedConfig, run_federated  # noqa: E402
from dpokit.federated.privacy import client_epsilons  # noqa: E402
from dpokit.store.versions import Registry  # noqa: E402
from helpers import tiny_model_dir  # noqa: E402
from helpers.task import pairs, write  # noqa: E402

SIZES = (8, 16)  # unequal, so a plain mean and the weighted one differ
OPENED: list[str] = []
WATCHED: set[str] = set()


def _watch(event, args):
    """Every file this (the server's) process opens that is a client's data file (while the run lasts)."""
    if WATCHED and event == "open" and args and isinstance(args[0], (str, os.PathLike)):
        if str(Path(os.fspath(args[0])).resolve()) in WATCHED:
            OPENED.append(os.fspath(args[0]))


sys.addaudithook(_watch)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fed")
    base = tiny_model_dir(tmp)
    files = [write(tmp / f"client{i}.jsonl", pairs(n, seed=10 + i)) for i, n in enumerate(SIZES)]
    WATCHED.update(str(f.resolve()) for f in files)
    cfg = load_config(None, {"model.path": str(base), "federated.clients": ",".join(map(str, files)),
                             "federated.rounds": 1, "federated.local_steps": 2, "federated.cpus": 2,
                             "lora.r": 4, "lora.alpha": 8, "train.proximal_mu": 0.5, "train.batch_size": 4, "train.lr": 1e-2,
                             "train.output": str(tmp / "out"), "train.registry": str(tmp / "registry"),
                             "data.max_length": 64, "data.max_prompt_length": 32}, root=FederatedConfig)
    result = run_federated(cfg)
    WATCHED.clear()
    return tmp, files, result


def test_global_adapter_is_the_record_weighted_mean(run):
    tmp, _, result = run
    out = tmp / "out"
    clients = [load_file(str(out / "clients" / f"client-{i}" / "round-1" / "run" / "final" /
                             "adapter_model.safetensors")) for i in range(len(SIZES))]
    start = load_file(str(out / "global" / "round-0" / "adapter_model.safetensors"))
    glob = load_file(str(result.final / "adapter_model.safetensors"))
    assert set(glob) == set(start) == set(clients[0]) == set(clients[1])
    moved = max(float(abs(clients[0][k] - clients[1][k]).max()) for k in glob)
    assert moved > 1e-4  # the clients trained apart, so the weighting shows
    for key in glob:
        expected = sum(n * c[key].astype("float64") for n, c in zip(SIZES, clients)) / sum(SIZES)
        assert abs(glob[key] - expected).max() < 1e-6, key


def test_fedprox_sends_mu_to_the_clients_local_training(run):
    """With --proximal-mu the server is Flower's FedProx, and μ reaches each client's own loop."""
    import yaml

    tmp, _, _ = run
    for i in range(len(SIZES)):
        local = yaml.safe_load((tmp / "out" / "clients" / f"client-{i}" / "round-1" / "config.yaml").read_text())
        assert local["train"]["proximal_mu"] == 0.5 and local["lora"]["init"].endswith("global.safetensors")


def test_the_server_receives_adapter_arrays_and_scalars_only(run):
    tmp, files, result = run
    start = load_file(str(tmp / "out" / "global" / "round-0" / "adapter_model.safetensors"))
    shapes = [[list(start[k].shape), "float32"] for k in sorted(start)]
    (entry,) = result.rounds
    assert sorted(r["num_examples"] for r in entry["received"]) == sorted(SIZES)
    for received in entry["received"]:
        assert received["arrays"] == shapes
        assert received["metrics"] == {"loss": "float", "reward_accuracy": "float", "reward_margin": "float"}
    assert OPENED == []  # the server's process never opened a client's file...
    for i, f in enumerate(files):  # ...each client's training process did
        report = json.loads((tmp / "out" / "clients" / f"client-{i}" / "round-1" / "run" /
                             "data_report_train.json").read_text())
        assert Path(report["input"]).resolve() == f.resolve()


def test_a_round_is_a_registered_version(run):
    tmp, _, result = run
    registry = Registry(tmp / "registry")
    (vid,) = registry.ids()
    record = registry.get(vid)
    assert Path(record["model"]) == result.final.resolve()
    assert record["data"] == {} and record["federated"]["round"] == 1
    assert set(record["metrics"]) == {"loss", "reward_accuracy", "reward_margin"}
    assert main(["versions", "promote", vid, "--registry", str(tmp / "registry")]) == 0  # its folder verifies


def test_accountant_against_the_rdp_bound():
    """One full Gaussian mechanism of multiplier z has RDP α/(2z²) at order α (Mironov 2017), and
    ε ≤ min_α α/(2z²) + ln(1/δ)/(α − 1); for z = 1, δ = 1e-5: α* = 1 + √(2·ln 1e5) = 5.798, ε ≤ 5.298.
    opacus converts more tightly, so its ε is below that and not far below; with sampling (q = 1/4)
    ε is smaller still, and a client never sampled has ε = 0."""
    eps = client_epsilons(1.0, 1, 4, 1, {"a": 1, "b": 0}, 1e-5)
    bound = min(a / 2 + math.log(1e5) / (a - 1) for a in [1 + i / 1000 for i in range(1, 20000)])
    assert bound == pytest.approx(5.298, abs=1e-3)
    assert 0.8 * bound < eps["a"]["epsilon_no_sampling"] <= bound
    assert eps["a"]["epsilon"] < eps["a"]["epsilon_no_sampling"]
    assert eps["b"]["epsilon_no_sampling"] == 0.0
    assert client_epsilons(0.0, 1, 1, 1, {"a": 1}, 1e-5)["a"]["epsilon"] == math.inf


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "a.jsonl", pairs(4, seed=0))
    common = ["federated", "--model", str(base), "--output", str(tmp_path / "out")]
    capsys.readouterr()  # the model writer's progress bar
    cases = [(["--clients", f"{data},{tmp_path / 'missing.jsonl'}"], "federated.clients.*file not found"),
             (["--clients", str(data), "--dp-noise", "1.0"], "federated.dp_noise.*needs --dp-clip"),
             (["--clients", str(data), "--client-eval", f"{data},{data}"], "federated.client_eval.*2 files for 1"),
             (["--clients", str(data), "--data", str(data)], "--data")]
    for args, message in cases:
        assert main(common + args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err


def test_under_dp_the_mean_is_unweighted(tmp_path):
    """The DP wrapper's noise is calibrated to one client's share C/m of a plain mean, so under DP the
    record counts do not weigh: with z = 0 (no noise) the new global is the start plus the plain mean
    of the (already clipped) updates, here (u1 + u2)/2, not (1·u1 + 3·u2)/4."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    from dpokit.federated.server import build_strategy

    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "a.jsonl", pairs(4, seed=0))
    cfg = load_config(None, {"model.path": str(base), "federated.clients": f"{data},{data}",
                             "federated.dp_clip": 1.0, "federated.dp_noise": 0.0, "train.registry": "",
                             "train.output": str(tmp_path / "out")}, root=FederatedConfig)
    template = tmp_path / "round-0"
    template.mkdir()
    (template / "adapter_config.json").write_text("{}")
    start = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
    keeper = build_strategy(cfg, ["a", "b"], start, tmp_path / "out", template)
    u1 = [np.full((2, 3), 0.1, np.float32), np.full(4, -0.2, np.float32)]
    u2 = [np.full((2, 3), 0.3, np.float32), np.full(4, 0.2, np.float32)]
    ok = Status(Code.OK, "")
    results = [(GridClientProxy(i, None, 0), FitRes(ok, ndarrays_to_parameters([s + u for s, u in zip(start, up)]),
                                                    n, {"loss": 0.5}))
               for i, (up, n) in enumerate(((u1, 1), (u2, 3)))]
    params, _ = keeper.aggregate_fit(1, results, [])
    from flwr.common import parameters_to_ndarrays

    for got, s, a, b in zip(parameters_to_ndarrays(params), start, u1, u2):
        np.testing.assert_allclose(got, s + (a + b) / 2, atol=1e-7)
    (entry,) = keeper.rounds
    assert all(c["epsilon"] == math.inf for c in entry["privacy"]["clients"].values())  # z = 0: no privacy
