"""``python -m dpokit.federated.worker CONFIG.yaml OUT.json``: a client's evaluation of the global
adapter (``lora.init`` of the config) on its held-out pairs (``data.train`` of the config), in a
process of its own: the loss and reward accuracy of β·log π/π_base, by the code training logs them with."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path


def evaluate_adapter(config: str) -> dict:
    from dpokit.config import load_config

    return adapter_metrics(load_config(config))


def adapter_metrics(cfg) -> dict:
    """The metrics of the adapter ``cfg.lora.init`` on the base ``cfg.model.path`` over the pairs of
    ``cfg.data.train``, the base as the reference, with the count of records."""
    from accelerate import Accelerator

    from dpokit.losses import get_loss
    from dpokit.policies import build_policy_kind
    from dpokit.policies.reference import CopyReference
    from dpokit.precision import resolve
    from dpokit.train.objective import dataset_metrics

    spec, accelerator = get_loss(cfg.loss.name), Accelerator()
    autocast = resolve(cfg.train.dtype, accelerator.device.type).autocast(accelerator.device)
    kind = build_policy_kind(cfg, spec)
    Path(cfg.train.output).mkdir(parents=True, exist_ok=True)  # the data report goes there
    records = kind.records(cfg.data.train, spec.input_kind, "eval", lambda *_: None)
    base = kind.load(cfg.model.path)
    reference = CopyReference(copy.deepcopy(base), kind, autocast) if spec.needs_reference else None
    policy = kind.trainable(base)  # the base with the global adapter
    metrics = dataset_metrics(spec, cfg.loss, cfg.train.batch_size, kind, policy, reference, records, autocast,
                              accelerator)
    return {**metrics, "records": len(records)}


def main(argv: list[str]) -> int:
    from dpokit.errors import UserError

    try:
        result = evaluate_adapter(argv[0])
    except UserError as exc:
        print(f"dpokit: error: {exc}", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
