"""The live experiment trackers a run can report to (``train.report_to``): one registry of their
names and the modules each needs, read by the config checks, the flag help and the training loop."""

from __future__ import annotations

import importlib.util

TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    # MLflow's own file store is refused by MLflow 3 unless opted into; its SQLite store needs these two
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "trackio": ("trackio",),
}
"""Tracker name (accelerate's) -> the modules it imports."""

EXTRA = 'pip install "dpokit[trackers]"'


def tracker_names(report_to: str) -> list[str]:
    """The names in ``report_to`` in order, each once; ``none`` (or nothing) is no tracker."""
    names: list[str] = []
    for word in (w.strip().lower() for w in (report_to or "").split(",")):
        if word and word != "none" and word not in names:
            names.append(word)
    return names


def report_to_problem(report_to: str) -> str | None:
    """Why ``report_to`` cannot be used here (an unknown name, a missing package), else None."""
    words = [w.strip().lower() for w in (report_to or "").split(",") if w.strip()]
    if "none" in words and len(words) > 1:
        return f"'none' cannot be combined with trackers ({report_to!r})"
    for name in tracker_names(report_to):
        if name not in TRACKERS:
            return f"unknown tracker {name!r}; known: {', '.join(TRACKERS)} (comma-separated), or none"
        missing = [m for m in TRACKERS[name] if not _installed(m)]
        if missing:
            what = "is not installed" if missing == [name] else f"needs {', '.join(missing)} (not installed)"
            return f"{name} {what}: {EXTRA}"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules: its import is blocked
        return False
