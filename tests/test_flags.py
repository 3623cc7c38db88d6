"""Flags come from the config fields: every field is a flag or declared as none, every spelling
that existed before still sets the same field, and old names work for one release with one
warning line (flags and YAML keys alike)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import DATA_FLAG_SET, EVAL_FLAG_SET, RANK_FLAG_SETS, build_parser
from dpokit.config.rank import RANK_UPDATE_NOT_FLAGS, RankCheckConfig, RankUpdateConfig
from dpokit.config import (DATA_COMMAND_NOT_FLAGS, FORMAT_NAMES, TRAIN_FLAG_SET, DataCommandConfig, EvalConfig,
                           RunConfig, load_config)
from dpokit.errors import UserError
from dpokit.config.flags import (ALIASES, FLAG_NAMES, RENAMED_FIELDS, SECTION_PREFIX, YAML_ONLY, field_info, leaf_fields,
                          overrides, spellings)
from dpokit.online.config import ONLINE_FLAG_SET, SET_BY_LOOP, OnlineConfig

OLD = json.loads((Path(__file__).parent / "flag_spellings.json").read_text(encoding="utf-8"))
FLAG_SETS = {"sft": TRAIN_FLAG_SET, "dpo": TRAIN_FLAG_SET, "online": ONLINE_FLAG_SET, "eval": EVAL_FLAG_SET,
             "data check": DATA_FLAG_SET, "data stats": DATA_FLAG_SET, "data convert": DATA_FLAG_SET}
POSITIONAL = {"data check": ["in.jsonl"], "data stats": ["in.jsonl"], "data convert": ["in.jsonl", "out.jsonl"]}
ROOTS = [(RunConfig, TRAIN_FLAG_SET, {}), (OnlineConfig, ONLINE_FLAG_SET, SET_BY_LOOP), (EvalConfig, EVAL_FLAG_SET, {}),
         (DataCommandConfig, DATA_FLAG_SET, DATA_COMMAND_NOT_FLAGS),
         (RankUpdateConfig, RANK_FLAG_SETS["update"], RANK_UPDATE_NOT_FLAGS),
         (RankCheckConfig, RANK_FLAG_SETS["check"], ())]


def _subparser(words: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def _value(action: argparse.Action) -> list[str]:
    """A valid command-line value for ``action``."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(action.choices[0])]
    word = {"int": "3", "float": "0.25"}.get(getattr(action.type, "__name__", ""), "x")
    return [word] * (action.nargs if isinstance(action.nargs, int) else 1)


OLD_SPELLINGS = [(cmd, flag, field) for cmd, flags in sorted(OLD["fields"].items()) for flag, field in flags.items()]


@pytest.mark.parametrize("cmd, flag, field", OLD_SPELLINGS, ids=[f"{c}:{f}" for c, f, _ in OLD_SPELLINGS])
def test_every_old_spelling_sets_the_same_field(cmd, flag, field, capsys):
    words = cmd.split()
    action = _subparser(words)._option_string_actions[flag]
    ns = build_parser().parse_args([*words, *POSITIONAL.get(cmd, []), flag, *_value(action)])
    assert list(overrides(ns, FLAG_SETS[cmd])) == [RENAMED_FIELDS.get(field, field)]
    warned = capsys.readouterr().err
    assert warned.count("\n") == (field in RENAMED_FIELDS)  # one line for a deprecated spelling, else none


@pytest.mark.parametrize("cmd", sorted(OLD["options"]))
def test_every_old_option_string_still_exists(cmd):
    assert set(OLD["options"][cmd]) <= set(_subparser(cmd.split())._option_string_actions)


@pytest.mark.parametrize("root, flags, skip", ROOTS, ids=[r.__name__ for r, _, _ in ROOTS])
def test_every_field_is_a_flag_or_declared_none(root, flags, skip):
    fields = leaf_fields(root)
    offered, declared = set(spellings(flags).values()), {f for f in YAML_ONLY if f in fields} | set(skip)
    sections = tuple(s for s in declared if s.endswith("."))
    assert [f for f in fields if f not in offered and f not in declared and not f.startswith(sections)] == []
    assert [f for f in fields if f in offered and (f in declared or f.startswith(sections))] == []
    assert sorted(declared - set(fields) - set(sections)) == [], "declared fields that do not exist"


def test_the_declarations_name_real_fields_and_say_why():
    run_fields = set(leaf_fields(OnlineConfig)) | set(leaf_fields(EvalConfig))
    assert set(FLAG_NAMES) <= run_fields and set(YAML_ONLY) <= run_fields
    assert all(reason.strip() for reason in (*YAML_ONLY.values(), *DATA_COMMAND_NOT_FLAGS.values()))
    # an entry of FLAG_NAMES is one the rule would name otherwise
    for dotted, flag in FLAG_NAMES.items():
        section, _, name = dotted.rpartition(".")
        assert flag != SECTION_PREFIX.get(section, "") + name, dotted
    assert set(RENAMED_FIELDS.values()) <= run_fields and not set(RENAMED_FIELDS) & run_fields


def test_a_flag_has_its_fields_type_choices_and_docstring():
    parser = _subparser(["dpo"])
    steps, optimizer = parser._option_string_actions["--max-steps"], parser._option_string_actions["--optimizer"]
    assert steps.help == field_info(RunConfig, "train.max_steps")[1] and steps.help.startswith("Optimizer steps")
    assert optimizer.choices == ("adamw", "sgd", "rmsprop")
    assert _subparser(["data", "check"])._option_string_actions["--format"].choices == FORMAT_NAMES.__args__
    # a field a config inherits keeps its docstring as help (rank check's canary log, versions check's prompts)
    for words, flag, start in ((["rank", "check"], "--held-out", "Logged-bandit records neither ranker"),
                               (["rank", "update"], "--held-out", "Logged-bandit records neither ranker"),
                               (["versions", "check"], "--prompts", field_info(EvalConfig, "prompts")[1])):
        assert _subparser(words)._option_string_actions[flag].help.startswith(start) and start


def test_fields_that_were_yaml_only_are_flags_now(tmp_path):
    ns = build_parser().parse_args(["dpo", "--adam-betas", "0.8", "0.95", "--weight-decay", "0.1", "--momentum",
                                    "0.5", "--logging-steps", "2", "--lora-dropout", "0.1", "--lora-target-modules",
                                    "q_proj,v_proj"])
    cfg = load_config(None, {"model.path": "m", "data.train": "d", **overrides(ns, TRAIN_FLAG_SET)})
    assert cfg.train.adam_betas == (0.8, 0.95) and cfg.train.weight_decay == 0.1 and cfg.train.momentum == 0.5
    assert cfg.train.logging_steps == 2 and cfg.lora.dropout == 0.1 and cfg.lora.target_modules == "q_proj,v_proj"


@pytest.mark.parametrize("old, new, field, value", [
    ("--cache-dir", "--ref-cache-dir", "train.ref_cache_dir", "refs"),
    ("--pair-margin", "--min-margin", "data.min_margin", 0.5),
])
def test_a_deprecated_flag_works_and_warns_once(capsys, old, new, field, value):
    ns = build_parser().parse_args(["dpo", old, str(value)])
    assert overrides(ns, TRAIN_FLAG_SET) == {field: value}
    assert capsys.readouterr().err == f"dpokit: warning: {old} is deprecated; use {new}\n"
    ns = build_parser().parse_args(["dpo", new, str(value)])
    assert overrides(ns, TRAIN_FLAG_SET) == {field: value} and capsys.readouterr().err == ""


@pytest.mark.parametrize("cmd, field", [("dpo", "loss.beta"), ("eval", "beta")])
def test_beta_is_the_general_name_and_dpo_beta_the_same_flag(capsys, cmd, field):
    assert ALIASES == {"dpo_beta": "beta"}
    for spelling in ("--beta", "--dpo-beta"):
        ns = build_parser().parse_args([cmd, spelling, "2.0"])
        assert overrides(ns, FLAG_SETS[cmd]) == {field: 2.0}
    assert capsys.readouterr().err == ""  # an alias, not a deprecation


def _yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, **data}), encoding="utf-8")
    return path


def test_old_yaml_keys_load_with_one_warning_each(tmp_path, capsys):
    cfg = load_config(_yaml(tmp_path, {"data": {"train": "d", "pair_margin": 0.5}, "train": {"cache_dir": "refs"}}))
    assert cfg.data.min_margin == 0.5 and cfg.train.ref_cache_dir == "refs"
    assert capsys.readouterr().err.splitlines() == [
        "dpokit: warning: data.pair_margin is deprecated; use data.min_margin",
        "dpokit: warning: train.cache_dir is deprecated; use train.ref_cache_dir"]


def test_an_old_and_a_new_key_together_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"field 'data.pair_margin': is the old name of data.min_margin"):
        load_config(_yaml(tmp_path, {"data": {"train": "d", "pair_margin": 0.5, "min_margin": 0.5}}))


def test_an_old_key_with_a_bad_value_is_named_as_written(tmp_path):
    with pytest.raises(UserError, match=r"field 'data.pair_margin': must be float"):
        load_config(_yaml(tmp_path, {"data": {"train": "d", "pair_margin": "wide"}}))


def test_an_online_run_saved_under_old_names_continues(tmp_path):
    """A rerun compares the settings with the saved ones; a renamed setting is the same setting."""
    from dpokit.online.loop import _check_settings

    cfg = OnlineConfig()
    saved = json.loads(json.dumps(cfg.to_dict()))
    saved["data"]["pair_margin"] = saved["data"].pop("min_margin")
    saved["train"]["cache_dir"] = saved["train"].pop("ref_cache_dir")
    (tmp_path / "online_config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    _check_settings(tmp_path, cfg)  # no "other settings" error
    saved["data"]["pair_margin"] = 1.0
    (tmp_path / "online_config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    with pytest.raises(UserError, match="data.min_margin"):
        _check_settings(tmp_path, cfg)


def test_format_and_kind_names_come_from_their_registries():
    """The format names of the config and of docs/data.md are the registry's; so are the kinds of ``--to``."""
    import re

    from dpokit.data.formats import FORMATS
    from dpokit.data.kinds import KIND_NAMES
    from dpokit.data.records import KINDS

    assert FORMAT_NAMES.__args__ == ("auto", *FORMATS)
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Formats"):text.index("\n## Kinds")]
    assert re.findall(r"^\*\*([a-z]+)\*\* —", section, re.M) == list(FORMATS)
    assert set(KIND_NAMES.values()) == set(KINDS)
    for cmd in ("check", "convert"):
        assert _subparser(["data", cmd])._option_string_actions["--to"].choices == tuple(KIND_NAMES)
