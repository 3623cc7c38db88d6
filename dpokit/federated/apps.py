"""The two Flower apps for clients on their own machines (``flower-superlink``, ``flower-supernode``,
``flwr run``; docs/federated.md). Both read a ``dpokit federated`` YAML config on their own machine:

- ``server``: the run config entry ``config`` (``flwr run . --run-config "config='fed.yaml'"``), with
  ``federated.num_clients`` instead of client files; it writes the rounds under ``train.output`` and
  registers them in ``train.registry``, as the simulation does;
- ``client``: the node config of its SuperNode: ``config`` (the same training settings, naming the base
  model where this machine keeps it), ``data`` (this client's preference file), optionally ``eval``
  (its held-out pairs) and ``work-dir`` (default ``dpokit-federated``).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.client import ClientApp
from flwr.client.mod import fixedclipping_mod

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.federated.config import FederatedConfig
from dpokit.federated.secure import run_rounds, secure_sum_mod

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _config(values, where: str) -> FederatedConfig:
    if "config" not in values:
        raise UserError(f"names no dpokit config: set config='fed.yaml' in the {where}")
    return load_config(str(values["config"]), root=FederatedConfig)


def _client_fn(context):
    from dpokit.federated.client import make_client

    node = context.node_config
    if "data" not in node:
        raise UserError("names no preference file: start the SuperNode with --node-config \"data='mine.jsonl'\"")
    cfg = _config(node, "SuperNode's --node-config")
    home = Path(str(node.get("work-dir", "dpokit-federated")))
    eval_data = str(node["eval"]) if "eval" in node else None
    return make_client(cfg, str(node["data"]), eval_data, home).to_client()


def _clip_where_asked(msg, context, call_next):
    """``fixedclipping_mod`` on training messages that carry the DP wrapper's clipping norm."""
    from flwr.app.message_type import MessageType

    if msg.metadata.message_type == MessageType.TRAIN and "clipping_norm" in msg.content.config_records.get(
            "fitins.config", {}):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


client = ClientApp(client_fn=_client_fn, mods=[secure_sum_mod, _clip_where_asked])
"""SecAgg+ (where the server runs it) masks what the clipping (where the server asks for it) left."""


def _server():
    from flwr.server import ServerApp

    from dpokit.federated.run import server_parts

    app = ServerApp()

    @app.main()
    def main(grid, context):
        cfg = _config(context.run_config, "run config (--run-config)")
        run_rounds(cfg, server_parts(cfg, Path(cfg.train.output)), grid, context)

    return app


server = _server()
