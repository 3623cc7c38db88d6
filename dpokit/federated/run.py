"""``dpokit federated``: the rounds on Flower's simulation engine, every client on this machine.

The server (Flower's ServerApp, in this process) holds the base model's name and the global adapter;
each client (a ClientApp on a virtual SuperNode, in a Ray worker process) holds one preference file
and trains in a process of its own. For clients on other machines the same two apps run under
``flower-superlink``/``flower-supernode`` (``dpokit.federated.apps``, docs/federated.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dpokit.federated.adapters import WEIGHTS, initial_adapter, read_arrays


@dataclass
class FederatedResult:
    output: Path
    rounds: list[dict]
    """Per round: what was received, the aggregated fit and held-out metrics, the model folder, the
    version and (with DP) each client's (ε, δ)."""
    final: Path | None


def client_app(cfg, home: Path):
    """The ClientApp of a simulation: virtual node i is the client of the i-th file. Under secure
    aggregation the SecAgg+ mod masks what the (inner) clipping mod left."""
    from flwr.client import ClientApp
    from flwr.client.mod import fixedclipping_mod

    from dpokit.federated.client import make_client
    from dpokit.federated.secure import secure_sum_mod

    files, evals = cfg.federated.client_files(), cfg.federated.eval_files()

    def client_fn(context):
        i = int(context.node_config["partition-id"])
        return make_client(cfg, files[i], evals[i] if evals else None, home / f"client-{i}").to_client()

    mods = [secure_sum_mod] if cfg.federated.secure_aggregation else []
    return ClientApp(client_fn=client_fn, mods=mods + ([fixedclipping_mod] if cfg.federated.dp_clip > 0 else []))


def server_parts(cfg, out: Path):
    """Round 0's adapter from the base model (``lora.init`` where given), then the strategy of ``server.py``."""
    from dpokit.federated.server import build_strategy

    start = out / "global" / "round-0"
    names = initial_adapter(cfg, start)
    return build_strategy(cfg, names, read_arrays(start / WEIGHTS, names), out, start)


def server_app(cfg, out: Path):
    """The ServerApp of a simulation (Flower's default rounds, through SecAgg+ where asked), and its
    strategy (which keeps the rounds' records)."""
    from flwr.server import ServerApp

    from dpokit.federated.secure import run_rounds

    keeper = server_parts(cfg, out)
    app = ServerApp()

    @app.main()
    def main(grid, context):
        run_rounds(cfg, keeper, grid, context)

    return app, keeper


def run_federated(cfg, log=print) -> FederatedResult:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower would otherwise try to report usage
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    f, out = cfg.federated, Path(cfg.train.output)
    out.mkdir(parents=True, exist_ok=True)
    from dpokit.config import save_config

    save_config(cfg, out / "config.yaml")
    app, keeper = server_app(cfg, out)
    cpus = f.cpus or os.cpu_count() or 1
    backend = {"client_resources": {"num_cpus": f.client_cpus},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True}}
    run_simulation(app, client_app(cfg, out / "clients"), num_supernodes=len(f.client_files()),
                   backend_config=backend)
    rounds = keeper.rounds
    for e in rounds:
        ev = e.get("eval", {})
        log(f"[federated] round {e['round']}: {len(e['received'])} clients trained, "
            f"held-out reward accuracy {ev.get('reward_accuracy', float('nan')):.3f} over {ev.get('clients', 0)} "
            f"clients" + (f", version {e['version']}" if e.get("version") else ""))
    final = Path(rounds[-1]["model"]) if rounds and "model" in rounds[-1] else None
    (out / "federated_report.json").write_text(json.dumps({"rounds": rounds}, indent=1), encoding="utf-8")
    if f.secure_aggregation:
        _every_round_aggregated(rounds, f.rounds, out)
    return FederatedResult(out, rounds, final)


def _every_round_aggregated(rounds: list[dict], expected: int, out: Path) -> None:
    """SecAgg+ halts a round where too few clients answered, and leaves out a client that failed
    (of a refusal in secure.py, say): either is an error here, not a round quietly missing a client."""
    from dpokit.errors import UserError

    done = {e["round"]: e for e in rounds if "model" in e}
    bad = next((r for r in range(1, expected + 1) if r not in done or done[r]["failures"]), None)
    if bad is not None:
        raise UserError(f"round {bad}'s secure aggregation {'halted' if bad not in done else 'lost a client'}: a "
                        f"client failed or dropped out (its error is logged above)", where=str(out))
