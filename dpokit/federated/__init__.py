"""Federated DPO: clients keep their preference files and train LoRA adapters locally; a Flower
server averages the adapters round after round (FedAvg, or FedProx), optionally with client-side
clipping and Gaussian noise (differential privacy), and registers each round's global adapter.

Needs ``pip install "dpokit[federated]"`` (flwr with its simulation engine, opacus's accountant).
"""

from dpokit.federated.config import FederatedConfig, FederatedSettings


def run_federated(cfg, log=print):
    from dpokit.federated.run import run_federated as run

    return run(cfg, log)


__all__ = ["FederatedConfig", "FederatedSettings", "run_federated"]
