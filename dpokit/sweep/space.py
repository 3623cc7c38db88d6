"""The search space: a YAML file naming run-config fields (dotted, ``train.lr``) and the values
each may take, checked against the config dataclasses before any trial runs.

    train.lr: {low: 1.0e-6, high: 1.0e-3, log: true}   # a range of the field's type (float or int)
    train.epochs: {low: 1, high: 3}
    loss.name: {choices: [sigmoid, ipo]}                # any field: a list of values of its type
    loss.beta: {low: 0.05, high: 0.5, grid: [0.05, 0.1, 0.5]}   # what --sampler grid tries

A range may carry ``step`` (int and non-log float ranges); ``grid`` lists the values the grid
sampler tries for a range (an int range, or a float range with a step, gives its own).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpokit.config import RunConfig
from dpokit.config.flags import field_info, leaf_fields
from dpokit.config.load import YAML_LOADER, coerce
from dpokit.errors import UserError

KEYS = {"low", "high", "log", "step", "grid", "choices"}
GRID_LIMIT = 10_000
"""Most points a range may expand to for the grid sampler."""


@dataclass(frozen=True)
class Param:
    """One searched field: a range of ``kind`` (``float`` or ``int``), or a list of choices."""

    name: str
    kind: str
    """``float``, ``int`` or ``choice``."""
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    values: tuple = ()
    """The choices, or the grid points of a range."""
    where: str = ""
    """``space.yaml:LINE``, for messages."""

    @property
    def extremes(self) -> tuple:
        """The values that bound what a trial may get: each choice or grid point, or both ends."""
        return self.values if self.values else (self.low, self.high)

    def suggest(self, trial) -> Any:
        """The trial's value, drawn by Optuna's sampler."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.values))


def _base_type(tp: Any) -> Any:
    """``float`` of ``float | None``; other annotations as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _lines(text: str) -> dict[str, int]:
    """The line of each top-level key, for messages."""
    node = yaml.compose(text, Loader=YAML_LOADER)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def read_space(path: str | Path, grid: bool = False) -> list[Param]:
    """The checked parameters of a space file; with ``grid``, each must have finite grid points."""
    path = Path(path)
    if not path.is_file():
        raise UserError("space file not found", where=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=YAML_LOADER)  # a SafeLoader
        lines = _lines(text)
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {str(exc).splitlines()[0]}", where=str(path)) from None
    if not isinstance(data, dict) or not data:
        raise UserError("must map config fields (train.lr, loss.beta, ...) to their ranges or choices",
                        where=str(path))
    fields = set(leaf_fields(RunConfig))
    params = []
    for name, spec in data.items():
        where = f"{path}:{lines.get(str(name), 1)}"
        if name not in fields:
            raise UserError("unknown config field (a dotted run-config field such as train.lr or loss.beta)",
                            where, str(name))
        params.append(_param(name, spec, where, grid))
    return params


def _param(name: str, spec: Any, where: str, grid: bool) -> Param:
    if not isinstance(spec, dict) or not spec or set(spec) - KEYS:
        raise UserError(f"must be a mapping with low/high (log, step, grid) or choices; got {spec!r}", where, name)
    tp = _base_type(field_info(RunConfig, name)[0])
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError("choices must be a non-empty list, alone", where, name)
        values = tuple(coerce(v, tp, where, name) for v in spec["choices"])
        if len(set(map(repr, values))) < len(values):
            raise UserError("choices repeat a value", where, name)
        return Param(name, "choice", values=values, where=where)
    if tp not in (int, float):
        raise UserError("is not a number; give choices: [...] of its values, not a range", where, name)
    if "low" not in spec or "high" not in spec:
        raise UserError("a range needs low and high", where, name)
    low, high = (coerce(spec[k], tp, where, name) for k in ("low", "high"))
    log, step = spec.get("log", False), spec.get("step")
    step = None if step is None else coerce(step, tp, where, name)
    checks = [(not low < high, "low must be below high"), (type(log) is not bool, "log must be true or false"),
              (log and low <= 0, "a log range needs low > 0"), (step is not None and step <= 0, "step must be > 0"),
              (log and step is not None and tp is float, "a log range of floats takes no step")]
    for bad, msg in checks:
        if bad:
            raise UserError(msg, where, name)
    points = _grid(spec, tp, low, high, step, where, name) if grid or "grid" in spec else ()
    if grid and not points:
        raise UserError("the grid sampler needs grid: [values], or a step, for a float range", where, name)
    return Param(name, tp.__name__, low, high, log, step, points, where)


def _grid(spec: dict, tp: type, low, high, step, where: str, name: str) -> tuple:
    if "grid" in spec:
        if not isinstance(spec["grid"], list) or not spec["grid"]:
            raise UserError("grid must be a non-empty list", where, name)
        points = tuple(coerce(v, tp, where, name) for v in spec["grid"])
        if any(not low <= v <= high for v in points):
            raise UserError(f"grid values must lie in [{low}, {high}]", where, name)
        return points
    if tp is float and step is None:
        return ()
    count = math.floor((high - low) / (step or 1) + 1e-9) + 1
    if count > GRID_LIMIT:
        raise UserError(f"expands to {count} grid points (more than {GRID_LIMIT}); give grid: [values]", where, name)
    return tuple(tp(low + i * (step or 1)) for i in range(count))


def check_against(params: list[Param], config: str) -> None:
    """Each bound of each parameter in the base config passes the config's own checks (a range of
    learning rates that reaches 0 is refused here, naming the space file, not in trial 7)."""
    from dpokit.config import load_config

    for p in params:
        for value in p.extremes:
            try:
                load_config(config, {p.name: value})
            except UserError as exc:
                if exc.field != p.name:
                    raise
                raise UserError(f"{value!r} is refused by the config: {exc.detail}", p.where, p.name) from None


def grid_space(params: list[Param]) -> dict[str, list]:
    """The grid sampler's search space: every parameter's points."""
    return {p.name: list(p.values) for p in params}


def describe(params: list[Param]) -> dict[str, dict]:
    """The space as plain data, stored with the study so a rerun can check it searches the same."""
    return {p.name: {"kind": p.kind, "low": p.low, "high": p.high, "log": p.log, "step": p.step,
                     "values": list(p.values)} for p in params}
