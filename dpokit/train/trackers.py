"""Live experiment trackers through accelerate's tracking API (``train.report_to``).

Every tracker writes on this machine and needs no account or network (docs/trackers.md):

- TensorBoard: event files in ``TRACKERS/tensorboard/RUN_NAME/dpokit/`` (the config as hparams, and
  ``hparams.yml``, in a timestamped folder below it, as accelerate writes them).
- W&B: an offline run in ``TRACKERS/wandb/offline-run-*`` (``wandb sync`` uploads it later), unless
  ``WANDB_MODE`` says otherwise.
- MLflow: the SQLite store ``TRACKERS/mlflow.db`` (artifacts in ``TRACKERS/mlflow-artifacts``),
  unless ``MLFLOW_TRACKING_URI`` names another; a run started while another is active (an online
  run's rounds) is its child. Its usage telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` says
  otherwise.
- trackio: its own local database (``$TRACKIO_DIR``, by default ``~/.cache/huggingface/trackio``).

``TRACKERS`` is ``train.trackers_dir`` (default ``OUTPUT/trackers``); the project (W&B, trackio) and
experiment (MLflow) is ``dpokit``, the run's name ``train.run_name`` (default: the output folder's
name). accelerate runs every tracker call on the main process only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dpokit.config.trackers import tracker_names
from dpokit.config.train import TrainConfig

PROJECT = "dpokit"


def tracker_folder(t: TrainConfig) -> Path:
    return Path(t.trackers_dir) if t.trackers_dir else Path(t.output) / "trackers"


def run_name(t: TrainConfig) -> str:
    return t.run_name or Path(t.output).resolve().name


def accelerator_kwargs(t: TrainConfig) -> dict:
    """What ``Accelerator(...)`` needs to log to the run's trackers (nothing for ``none``)."""
    from accelerate.utils import ProjectConfiguration

    names = tracker_names(t.report_to)
    if not names:
        return {}
    folder = tracker_folder(t)
    return {"log_with": names, "project_config": ProjectConfiguration(
        project_dir=str(folder), logging_dir=str(folder / "tensorboard" / run_name(t)))}


def start(accelerator, t: TrainConfig, config: dict, first_step: int = 1) -> None:
    """Start a run in each tracker with ``config`` flattened to ``section.field`` keys.
    ``first_step`` > 1 (a resumed run): TensorBoard drops what an earlier attempt logged from there
    on, as metrics.jsonl does."""
    names = tracker_names(t.report_to)
    if not names or not accelerator.is_main_process:
        return
    folder, name, flat = tracker_folder(t), run_name(t), flatten(config)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {
        "tensorboard": {"purge_step": first_step} if first_step > 1 else {},
        # W&B and trackio take the config at init: accelerate's own call writes to the global run, which
        # is not this one while an online run holds its own
        "wandb": {"name": name, "dir": str(folder), "mode": os.environ.get("WANDB_MODE", "offline"),
                  "reinit": "create_new", "config": flat},
        "trackio": {"name": name, "config": flat, "auto_log_cpu": False, "auto_log_gpu": False},
    }
    if "mlflow" in names:
        kwargs["mlflow"] = _mlflow_settings(folder, name)
    accelerator.init_trackers(PROJECT, init_kwargs=kwargs)
    for tracker in accelerator.trackers:
        if tracker.name in ("tensorboard", "mlflow"):
            tracker.store_init_configuration(flat)


def _mlflow_settings(folder: Path, name: str) -> dict:
    # MLflow 3 sends usage telemetry from the moment it is imported, unless told not to
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{(folder / 'mlflow.db').resolve()}")
    return {"run_name": name, "logging_dir": str((folder / "mlflow-artifacts").resolve()),
            "nested_run": mlflow.active_run() is not None}


def reporter(t: TrainConfig, config: dict):
    """An ``Accelerator`` that only reports (an online run's figures per round, its rounds' training
    runs reporting beside it), started; None for ``none``."""
    if not tracker_names(t.report_to):
        return None
    from accelerate import Accelerator

    from dpokit.train import engines

    engines.cpu_processes_without_gpus()  # before the process's first Accelerator
    accelerator = Accelerator(**accelerator_kwargs(t))
    start(accelerator, t, config)
    return accelerator


def log(accelerator, record: dict, step: int) -> None:
    """The numbers of a metrics.jsonl record (all but its ``step``) at ``step``."""
    values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
    if values and accelerator is not None and accelerator.trackers:
        # MLflow writes from its own thread (flushed when the run ends), not in the step's time
        accelerator.log(values, step=step, log_kwargs={"mlflow": {"synchronous": False}})


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as ``a.b`` keys; values trackers take as they are (numbers, text, booleans),
    anything else (None, lists) as its JSON text."""
    flat: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return flat


def finish(accelerator) -> None:
    """End the trackers' runs (what ``Accelerator.end_training`` does before it also destroys the
    process group, which an online run's next round and a quickstart's next stage still use)."""
    if accelerator is None:
        return
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
