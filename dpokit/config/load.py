"""Configs from YAML and dotted overrides: every key must name a field, every value must have its type."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from dpokit.config.flags import RENAMED_FIELDS
from dpokit.config.run import RunConfig
from dpokit.errors import UserError, warn


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are due."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            return _coerce(value, arg, where, key)
    if origin is Literal:
        if value not in args:
            raise UserError(f"must be one of {', '.join(map(str, args))}; got {value!r}", where, key)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"must be a list of {len(args)} numbers; got {value!r}", where, key)
        return tuple(_coerce(v, a, where, key) for v, a in zip(value, args))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"must be a finite number; got {value!r}", where, key)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise UserError(f"must be {tp.__name__}; got {type(value).__name__} {value!r}", where, key)
    return value


def _apply(obj: Any, values: dict[str, Any], where: str, prefix: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"must be a mapping; got {type(values).__name__}", where, prefix.rstrip("."))
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{prefix}{key}"
        key = _renamed(key, name, values, where)
        if key not in hints:
            known = ", ".join(f"{prefix}{k}" for k in hints)
            raise UserError(f"unknown key (known: {known})", where, name)
        if dataclasses.is_dataclass(hints[key]):
            _apply(getattr(obj, key), value, where, f"{name}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where, name))


def _renamed(key: str, name: str, values: dict, where: str) -> str:
    """The field an old key now names (with a warning; ``flags.RENAMED_FIELDS``), or ``key`` itself."""
    new = RENAMED_FIELDS.get(name)
    if new is None:
        return key
    key = new.rpartition(".")[2]
    if key in values:
        raise UserError(f"is the old name of {new}; give only one of them", where, name)
    warn(f"{name} is deprecated; use {new}")
    return key


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-5`` as a number (YAML 1.2; PyYAML's 1.1 rules want ``1.0e-5``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                root: type = RunConfig) -> Any:
    """Build a config (RunConfig or EvalConfig) from a YAML file and dotted overrides, then validate it."""
    cfg = root()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("config file not found", where=str(path))
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}  # noqa: S506 - safe
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"not valid YAML: {str(exc).splitlines()[0]}", where=str(path)) from None
        except RecursionError:
            raise UserError("not valid YAML: nested too deeply", where=str(path)) from None
        _apply(cfg, data, str(path), "")
    for dotted, value in (overrides or {}).items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        _apply(cfg, nested, "command line", "")
    return cfg.validate()


def save_config(cfg: RunConfig, path: Path) -> None:
    data = cfg.to_dict()
    data["train"]["adam_betas"] = list(data["train"]["adam_betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


coerce = _coerce
"""``_coerce`` for other readers of config values (a sweep's space file): the same types, the same messages."""
YAML_LOADER = _Loader
"""The YAML loader of config files, for other files read the same way."""
