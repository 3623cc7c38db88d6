"""A Flower client: one holder of preference data. Its records never leave it; what it sends back
are adapter weights, a count of records and a few metric scalars.

Each ``fit`` writes the global adapter to a file, runs dpokit's own training loop on the client's
file in a fresh process (``python -m dpokit.cli dpo --config ...``: the loop installs signal
handlers, which need a main thread, and a process of its own gives back all its memory when a round
ends), and reads the trained adapter back. ``evaluate`` scores the global adapter's implicit reward
β·log π/π_base on the client's held-out pairs, in a process of its own too (``worker.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dpokit.errors import UserError
from dpokit.federated.adapters import WEIGHTS, read_arrays, write_arrays

FIT_METRICS = {"loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}
"""What a client reports of its local training (name sent -> key of its metrics.jsonl): scalars only."""
EVAL_METRICS = {"loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}
"""What a client reports of the global adapter on its held-out pairs."""
KEYS = "adapter_keys"
"""The fit/evaluate config entry naming the adapter weights, in the order of the arrays."""


def _run(args: list[str], folder: Path, what: str) -> None:
    """A dpokit command in its own process, its output kept in ``folder/log.txt``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # dpokit importable there as it is here
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log.txt").open("w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = (folder / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise UserError(f"{what} failed (exit {done.returncode}): {tail[0] if tail else ''}", where=str(folder))


def _last(path: Path, prefix: str = "") -> dict:
    """The last line of a metrics.jsonl that holds ``prefix``-ed keys."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return next(r for r in reversed(rows) if any(k.startswith(prefix) and k != "step" for k in r))


def make_client(cfg, data: str, eval_data: str | None, home: Path):
    """The client holding ``data`` (and ``eval_data``), working in its own folder ``home``."""
    from flwr.client import NumPyClient

    from dpokit.config import save_config

    class PreferenceClient(NumPyClient):
        def fit(self, parameters, config):
            round_no, names = int(config["server_round"]), str(config[KEYS]).split(",")
            folder = home / f"round-{round_no}"
            folder.mkdir(parents=True, exist_ok=True)
            write_arrays(folder / "global.safetensors", names, parameters)
            local = cfg.local_config(data, None, str(folder / "run"), round_no, str(folder / "global.safetensors"),
                                     float(config.get("proximal_mu", 0.0)))
            local.train.ref_cache_dir = str(home / "reflogps")  # the base's log-probs: the same every round
            local.data.cache_dir = str(home / "data_cache")
            save_config(local, folder / "config.yaml")
            _run(["-m", "dpokit.cli", "dpo", "--config", str(folder / "config.yaml")], folder,
                 f"round {round_no}'s local training")
            trained = read_arrays(folder / "run" / "final" / WEIGHTS, names)
            report = json.loads((folder / "run" / "data_report_train.json").read_text(encoding="utf-8"))
            last = _last(folder / "run" / "metrics.jsonl")
            return trained, int(report["records_out"]), {k: float(last[v]) for k, v in FIT_METRICS.items()}

        def evaluate(self, parameters, config):
            if not eval_data:
                raise UserError("this client has no held-out file (--client-eval)", where=str(home))
            round_no, names = int(config["server_round"]), str(config[KEYS]).split(",")
            folder = home / f"eval-{round_no}"
            folder.mkdir(parents=True, exist_ok=True)
            write_arrays(folder / "global.safetensors", names, parameters)
            local = cfg.local_config(eval_data, None, str(folder / "run"), round_no,
                                     str(folder / "global.safetensors"), 0.0)
            local.data.cache_dir = str(home / "data_cache")
            save_config(local, folder / "config.yaml")
            _run(["-m", "dpokit.federated.worker", str(folder / "config.yaml"), str(folder / "metrics.json")],
                 folder, f"round {round_no}'s evaluation")
            m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            return float(m["loss"]), int(m["records"]), {k: float(m[v]) for k, v in EVAL_METRICS.items()}

    return PreferenceClient()
