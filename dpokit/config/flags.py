"""Command-line flags made from the config dataclasses, so a field is listed once.

Every leaf field of a command's config is the flag ``--field-name`` (``lora`` and ``guard``
fields carry their section's name: ``--lora-r``, ``--guard-max-kl``), with the field's type,
the choices of a ``Literal`` and the field's docstring as help. What differs from that rule is
written here and nowhere else: ``FLAG_NAMES`` (a flag named other than its field), ``ALIASES``
(a second spelling that reads the same), ``RENAMED_FIELDS`` (an old name kept for one release,
as a flag and as a YAML key, with a warning) and ``YAML_ONLY`` (a field no command offers as a flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal

from dpokit.cli_errors import typed
from dpokit.errors import warn

SECTION_PREFIX = {"lora": "lora_", "guard": "guard_"}
"""Sections whose flags carry the section's name; the others' fields are flags under their own names."""

FLAG_NAMES = {
    "model.path": "model", "model.ref_path": "ref_model",
    "lora.enabled": "lora", "lora.merge": "merge_lora",
    "data.train": "data", "data.eval": "eval_data", "data.cache": "data_cache", "data.cache_dir": "data_cache_dir",
    "loss.name": "loss", "guard.enabled": "guard",
}
"""Field -> flag, for the flags whose name is not the field's (``--data`` is ``data.train``)."""

ALIASES = {"dpo_beta": "beta"}
"""Second spelling -> flag, accepted silently wherever that flag exists (β of every loss, not only DPO's)."""

RENAMED_FIELDS = {"data.pair_margin": "data.min_margin", "train.cache_dir": "train.ref_cache_dir"}
"""Old field -> new field, for one release: the old YAML key and the old flag still work and warn."""

YAML_ONLY: dict[str, str] = {
    "data.sources": "a list of mappings, one per source (several sources without settings: --data a:0.6,b:0.4)",
}
"""Fields that no command offers as a flag: field -> why."""


@dataclass(frozen=True)
class Flag:
    """One field's flag: its name, the spellings that read the same, and the deprecated ones."""

    dotted: str
    name: str
    aliases: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases, *self.deprecated)


_hints = functools.cache(typing.get_type_hints)  # resolving annotations is slow; parsers are built often


def flag_name(dotted: str) -> str:
    """The flag (underscores, no dashes) of a field: ``train.max_steps`` -> ``max_steps``."""
    if dotted in FLAG_NAMES:
        return FLAG_NAMES[dotted]
    section, _, name = dotted.rpartition(".")
    return SECTION_PREFIX.get(section, "") + name


def leaf_fields(root: type, prefix: str = "") -> list[str]:
    """Every settable field of a config class, dotted (``train.lr``), nested sections walked."""
    out = []
    for f in dataclasses.fields(root):
        tp = _hints(root)[f.name]
        out += leaf_fields(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def config_flags(root: type, skip: typing.Iterable[str] = ()) -> tuple[Flag, ...]:
    """The flags of a command whose config is ``root``: every field, less ``skip`` (fields, or
    sections as ``model.``) and ``YAML_ONLY``."""
    skip = set(skip) | set(YAML_ONLY)
    sections = tuple(s for s in skip if s.endswith("."))
    fields = [d for d in leaf_fields(root) if d not in skip and not d.startswith(sections)]
    names = {flag_name(d): d for d in fields}
    if len(names) < len(fields):
        raise ValueError(f"two fields of {root.__name__} would share a flag")
    renamed = {flag_name(old): flag_name(new) for old, new in RENAMED_FIELDS.items()}
    return tuple(Flag(d, n, tuple(a for a, to in ALIASES.items() if to == n),
                      tuple(o for o, to in renamed.items() if to == n)) for n, d in names.items())


def spellings(flags: typing.Iterable[Flag]) -> dict[str, str]:
    """Every accepted spelling (underscores) -> its field: what ``--spelling`` sets."""
    return {s: f.dotted for f in flags for s in f.spellings}


@functools.cache
def docstrings(cls: type) -> dict[str, str]:
    """The docstring under each annotated field of a config class, its bases' fields included
    (parsed once per class)."""
    import ast
    import inspect

    out: dict[str, str] = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):  # a subclass's own text wins
        body = ast.parse(inspect.getsource(base)).body[0].body
        out.update({node.target.id: nxt.value.value for node, nxt in zip(body, body[1:])
                    if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)})
    return out


def field_info(root: type, dotted: str) -> tuple[Any, str]:
    """(annotation, docstring) of a config field, for the flag's type and help."""
    *parents, name = dotted.split(".")
    cls = root
    for p in parents:
        cls = _hints(cls)[p]
    return _hints(cls)[name], docstrings(cls).get(name, "")


def _warning(action: type[argparse.Action], old: tuple[str, ...], new: str) -> type[argparse.Action]:
    """``action`` that also warns when given under one of the ``old`` option strings."""

    class Warned(action):
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in old:
                negated = option_string.startswith("--no-")
                warn(f"{option_string} is deprecated; use {'--no-' + new[2:] if negated else new}")
            super().__call__(parser, namespace, values, option_string)

    return Warned


def _argument(tp: Any) -> dict[str, Any]:
    """add_argument's keywords for a field of annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"choices": args, "type": typed(type(args[0]))}
    if origin is tuple:
        return {"nargs": len(args), "type": typed(args[0])}
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": typed(base)}


def add_flags(parser: argparse.ArgumentParser, flags: typing.Iterable[Flag], root: type) -> None:
    for flag in flags:
        tp, doc = field_info(root, flag.dotted)
        kw = _argument(tp)
        opts = ["--" + s.replace("_", "-") for s in flag.spellings]
        if flag.deprecated:
            action = kw.get("action", argparse._StoreAction)
            old = tuple("--" + s.replace("_", "-") for s in flag.deprecated)
            if action is argparse.BooleanOptionalAction:  # it adds --no-OLD too
                old += tuple(f"--no-{o[2:]}" for o in old)
            kw["action"] = _warning(action, old, opts[0])
            doc += f" ({', '.join(o for o in old if not o.startswith('--no-'))}: deprecated spelling)"
        parser.add_argument(*opts, dest=flag.name, default=None, help=doc, **kw)


def overrides(ns: argparse.Namespace, flags: typing.Iterable[Flag]) -> dict[str, Any]:
    """{field: value} of the flags given on the command line."""
    return {f.dotted: getattr(ns, f.name) for f in flags if getattr(ns, f.name) is not None}
