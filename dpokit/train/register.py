"""A finished training run as a new version of the registry its config names (``train.registry``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from dpokit.errors import UserError
from dpokit.losses import get_loss
from dpokit.store.atomic import file_sha256, folder_digest
from dpokit.store.versions import Registry, abs_path, pin_version, utc_now


def _data_entry(path: str, records: list | None, kind) -> dict:
    return {"path": abs_path(path), "sha256": file_sha256(Path(path)) if Path(path).is_file() else None,
            "tokens_sha256": kind.fingerprint(records) if records else None}


def _eval_in(run: Path) -> dict | None:
    """An evaluation report left in the run folder (``dpokit eval --output RUN`` or ``RUN/eval``)."""
    for path in (run / "eval_report.json", run / "eval" / "eval_report.json"):
        with contextlib.suppress(OSError, ValueError):
            return {"report": json.loads(path.read_text()), "source": str(path), "added": utc_now()}
    return None


def build_record(cfg, result, kind, datasets: dict, registry: Registry) -> dict:
    """What a version records about a finished training run (``cfg``: RunConfig, ``result``: TrainResult)."""
    start = pin_version(cfg.model.path)  # the folder it named at training time
    ref = pin_version(cfg.model.ref_path or start) if get_loss(cfg.loss.name).needs_reference else None
    files = {"train": cfg.data.train, "eval": cfg.data.eval}
    return {
        "created": utc_now(),
        "model": abs_path(str(result.final)), "model_sha256": folder_digest(Path(result.final)),
        "run": abs_path(str(result.output)),
        "parent": registry.find_model(start), "parent_model": abs_path(start),
        "reference": {"model": abs_path(ref), "version": registry.find_model(ref)} if ref else None,
        "data": {name: _data_entry(path, datasets.get(name), kind) for name, path in files.items() if path},
        "loss": cfg.loss.name, "steps": result.steps,
        "config": cfg.to_dict(),
        "metrics": result.last_metrics, "eval_metrics": result.eval_metrics,
        "eval": _eval_in(Path(result.output)),
    }


def register_run(cfg, result, kind, datasets: dict, log=print) -> str | None:
    """Register ``result.final`` as a new version in ``cfg.train.registry`` (no-op when unset)."""
    if not cfg.train.registry:
        return None
    registry = Registry(cfg.train.registry)
    try:
        vid = registry.add(build_record(cfg, result, kind, datasets, registry))
    except UserError as exc:
        raise UserError(f"{result.final} was saved, but registering it failed: {exc}") from None
    log(f"[versions] registered {result.final} as {vid} in {registry.root}")
    return vid
