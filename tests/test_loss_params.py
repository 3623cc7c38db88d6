"""A loss declares the hyperparameters it reads where it is registered: name, default, allowed
values. The config's ``loss`` fields, its checks, the per-loss defaults and the table of
docs/losses.md all follow the registry."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dpokit.config.loss import LossConfig
from dpokit.losses import Param, all_losses, all_params, get_loss, losses_for, register
from dpokit.losses.base import SHARED

FIELDS = {f.name: f.default for f in dataclasses.fields(LossConfig) if f.name != "name"}


def test_every_loss_field_is_read_by_a_registered_loss_and_no_other_is_declared():
    assert set(all_params()) == set(FIELDS)


def test_per_loss_defaults_are_for_fields_left_empty():
    """A loss's own default can apply only to a field the user may leave empty (None); each such
    field has a shared default, so every run saves a value."""
    for spec in all_losses().values():
        for p in spec.params:
            assert p.default is None or FIELDS[p.name] is None, (spec.name, p.name)
    assert {name for name, default in FIELDS.items() if default is None} == {p.name for p in SHARED}


def test_the_defaults_that_differ_per_loss_are_the_ones_that_did():
    shared = {p.name: p.default for p in SHARED}
    own = {name: {k: v for k, v in spec.defaults if v != shared[k]} for name, spec in all_losses().items()}
    assert {name: d for name, d in own.items() if d} == {
        "cdpo": {"label_smoothing": 0.1}, "robust": {"label_smoothing": 0.1}, "simpo": {"beta": 2.0},
        "diffusion_dpo": {"beta": 5000.0}}
    for name, beta, eps in (("simpo", 2.0, 0.0), ("cdpo", 0.1, 0.1), ("sft", 0.1, 0.0), ("simpo,nll:0.5", 2.0, 0.0),
                            ("nll,simpo", 0.1, 0.0)):
        cfg = LossConfig(name=name)
        cfg.resolve_defaults(get_loss(name).defaults)
        assert (cfg.beta, cfg.label_smoothing) == (beta, eps), name


def _outside(allowed: str) -> float:
    """A value just outside an interval's lower end (or at its open upper end)."""
    lo, hi = (float(x) for x in allowed[1:-1].split(","))
    if hi != float("inf") and allowed[-1] == ")":
        return hi
    return lo if allowed[0] == "(" else lo - 1


RULES = [p for p in all_params().values() if p.allowed]


@pytest.mark.parametrize("param", RULES, ids=[p.name for p in RULES])
def test_each_declared_rule_is_checked_and_names_the_field(param):
    cfg = LossConfig()
    cfg.resolve_defaults(())
    assert [c for c in cfg.checks() if c[0]] == []  # the defaults pass
    setattr(cfg, param.name, _outside(param.allowed))
    bad = [(field, msg) for failed, field, msg in cfg.checks() if failed]
    assert bad == [(f"loss.{param.name}", param.problem(_outside(param.allowed)))]
    assert bad[0][1].startswith("must be")


@pytest.mark.parametrize("allowed, value, problem", [
    ("(0, inf)", 0.0, "must be > 0"), ("[0, inf)", -0.5, "must be ≥ 0"), ("[0, 0.5)", 0.5, "must be in [0, 0.5)"),
    ("[0, 1)", 0.999, None), ("(0, 1]", 1.0, None), ("", -1e9, None),
])
def test_an_interval_reads_as_its_message(allowed, value, problem):
    assert Param("x", allowed=allowed).problem(value) == problem


def test_one_field_has_one_rule_whichever_loss_reads_it():
    with pytest.raises(ValueError, match="beta allowed"):
        register("test_loose_beta", needs_reference=False, input_kind="pair",
                 params=(Param("beta", allowed="[0, inf)"),))(lambda *a: None)
    assert "test_loose_beta" not in all_losses()


def test_listwise_losses_come_from_the_registry():
    from dpokit.config import RunConfig
    from dpokit.errors import UserError
    from dpokit.online.config import OnlineConfig

    assert set(losses_for("list")) == {"plackett_luce", "softmax_dpo", "lipo"}
    assert all(get_loss(name).input_kind == "list" for name in losses_for("list"))
    online = OnlineConfig()
    online.online.pairing = "list"
    with pytest.raises(UserError) as exc:
        online._kind_checks(RunConfig())  # sigmoid takes pairs, not lists
    assert all(name in str(exc.value) for name in losses_for("list"))


def _table() -> dict[str, str]:
    """Loss name -> the hyperparameters cell of the table in docs/losses.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|(.*)\|\s*$", text, re.M)
    return {name: re.split(r"(?<!\\)\|", rest)[2] for name, rest in rows}


def test_the_docs_table_names_each_losss_flags_and_beta_default():
    table = _table()
    assert set(table) == set(all_losses())
    shared = {p.name for p in SHARED}
    for name, cell in table.items():
        spec = get_loss(name)
        flags = {"--" + p.name.replace("_", "-") for p in spec.params}
        named = set(re.findall(r"`(--[a-z-]+)`", cell))
        assert named <= flags, (name, named - flags)
        own = {"--" + p.name.replace("_", "-") for p in spec.params if p.name not in shared}
        assert own <= named, (name, own - named)
        beta = re.search(r"β \(([\d.]+)\)", cell)
        assert (beta is not None) == ("beta" in {p.name for p in spec.params}), name
        if beta:
            cfg = LossConfig(name=name)
            cfg.resolve_defaults(spec.defaults)
            assert float(beta.group(1)) == cfg.beta, name


def test_the_kinds_losses_take_are_the_record_kinds():
    """losses/ may import nothing of dpokit's data, so its ``Kind`` is written there; it must be the registry's."""
    from dpokit.data.records import KINDS
    from dpokit.losses.base import Kind

    assert set(Kind.__args__) == set(KINDS)
    assert all(set(spec.kinds) <= set(KINDS) for spec in all_losses().values())
