"""``dpokit rank check`` and ``watch``: the current ranker against the previous one on a canary
log. A good day's promoted ranker holds up, with a gain that a naive per-record computation gives
again; a ranker trained on flipped clicks, promoted by hand, is rolled back with the reason; so is
a damaged model folder (by ``watch``); a registry with one version current has nothing to check."""

from __future__ import annotations

import shutil
from statistics import NormalDist

import numpy as np
import pytest

from dpokit.cli import main
from dpokit.rank.logs import off_policy_data, read_log, write_jsonl
from dpokit.rank.ope import estimate
from dpokit.rank.simulate import SlatePolicy, ranker_scorer
from dpokit.store.versions import Registry

from helpers.rank import TRAIN, ranker_registry


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """v1 trained on day 0's clicks and current; v2, a good day's update of it, promoted; v3, an
    update on the same day's clicks flipped, refused; and a canary log no ranker trained on."""
    tmp = tmp_path_factory.mktemp("rank_check")
    world, reg, files = ranker_registry(tmp)
    files["canary"] = write_jsonl(tmp / "canary.jsonl", world.sample_log(2000, seed=4))
    for which in ("day", "flipped"):
        assert main(["rank", "update", "--registry", str(reg), "--log", str(files[which]), "--held-out",
                     str(files["held"]), "--max-kl", "0.5", *TRAIN]) == 0
    assert Registry(reg).history() == ["v1", "v2"] and Registry(reg).ids() == ["v1", "v2", "v3"]
    return tmp, world, reg, files


def check_args(reg, files, *extra, action="check"):
    return ["rank", action, "--registry", str(reg), "--held-out", str(files["canary"]), *extra]


def copy_of(reg, tmp_path):
    out = tmp_path / "registry"
    shutil.copytree(reg, out)
    return Registry(out)


def naive_snips_gain(world, canary, current: str, previous: str) -> tuple[float, float, float]:
    """(gain, low, high) of SNIPS(current) − SNIPS(previous) at 95%, from the per-record
    linearised terms w_i (c_i − V) / mean(w), paired record by record."""
    terms, values = [], []
    for folder in (current, previous):
        data = off_policy_data(canary, SlatePolicy(ranker_scorer(folder, world.item_ids), "softmax"), world.item_ids)
        w = data.target[np.arange(len(data.item)), data.item] / data.propensity
        v = float((w * data.click).sum() / w.sum())
        values.append(v)
        terms.append(w * (data.click - v) / w.mean())
    diff = terms[0] - terms[1]
    half = NormalDist().inv_cdf(0.975) * float(np.std(diff, ddof=1)) / np.sqrt(len(diff))
    gain = values[0] - values[1]
    return gain, gain - half, gain + half


def test_a_promoted_good_day_holds_up(days, tmp_path, capsys):
    _, world, reg, files = days
    registry = copy_of(reg, tmp_path)
    events = registry.events()
    capsys.readouterr()
    assert main(check_args(registry.root, files)) == 0
    out = capsys.readouterr().out
    assert "v2 holds up against v1: SNIPS click rate" in out
    assert registry.history() == ["v1", "v2"]
    entry = registry.get("v2")["checks"][-1]
    assert entry["against"] == "v1" and entry["reasons"] == [] and not entry["rolled_back"]
    f = entry["figures"]
    canary = read_log(files["canary"], world.item_ids)
    current, previous = registry.get("v2")["model"], registry.get("v1")["model"]
    snips = {side: {e.method: e for e in estimate(off_policy_data(
        canary, SlatePolicy(ranker_scorer(folder, world.item_ids), "softmax"), world.item_ids))}["SNIPS"]
        for side, folder in (("current", current), ("previous", previous))}
    for side in ("current", "previous"):
        assert f[side]["value"] == pytest.approx(snips[side].value, rel=1e-9)
    gain, low, high = naive_snips_gain(world, canary, current, previous)
    assert (f["gain"]["value"], f["gain"]["low"], f["gain"]["high"]) == pytest.approx((gain, low, high), rel=1e-9)
    assert f["gain"]["low"] > 0 and f["records"] == len(canary)
    assert registry.events() == events  # a check that holds up logs nothing in the index

    # by DR: its values are dpokit.rank.ope.estimate's DR, and the gain their difference
    assert main(check_args(registry.root, files, "--estimator", "dr")) == 0
    assert "v2 holds up against v1: DR click rate" in capsys.readouterr().out
    f = registry.get("v2")["checks"][-1]["figures"]
    dr = {side: {e.method: e for e in estimate(off_policy_data(
        canary, SlatePolicy(ranker_scorer(folder, world.item_ids), "softmax"), world.item_ids))}["DR"].value
        for side, folder in (("current", current), ("previous", previous))}
    assert (f["estimator"], f["current"]["value"], f["previous"]["value"]) == pytest.approx(
        ("DR", dr["current"], dr["previous"]), rel=1e-9)
    assert f["gain"]["value"] == pytest.approx(dr["current"] - dr["previous"], rel=1e-9) and f["gain"]["low"] > 0


def test_a_ranker_of_flipped_clicks_promoted_by_hand_is_rolled_back(days, tmp_path, capsys):
    _, world, reg, files = days
    registry = copy_of(reg, tmp_path)
    assert main(["versions", "promote", "v3", "--registry", str(registry.root)]) == 0
    capsys.readouterr()
    assert main(check_args(registry.root, files, "--margin", "0.01")) == 0
    out = capsys.readouterr().out
    said = out.splitlines()[-1]
    assert said.startswith("v2 is current again (was v3): loses to the previous version: SNIPS gain interval high")
    assert registry.history() == ["v1", "v2"]
    event = registry.last_event()
    assert event["action"] == "check: rollback v3" and event["current"] == "v2"
    entry = registry.get("v3")["checks"][-1]
    assert entry["rolled_back"] and entry["against"] == "v2" and event["reasons"] == entry["reasons"]
    canary = read_log(files["canary"], world.item_ids)
    _, _, high = naive_snips_gain(world, canary, registry.get("v3")["model"], registry.get("v2")["model"])
    assert high < -0.01 and entry["figures"]["gain"]["high"] == pytest.approx(high, rel=1e-9)
    assert entry["reasons"] == [f"loses to the previous version: SNIPS gain interval high {high:+.5f} < -margin 0.01"]

    # the same ranker with a margin wider than its loss is kept: the margin is what the rule reads
    assert main(["versions", "promote", "v3", "--registry", str(registry.root)]) == 0
    assert main(check_args(registry.root, files, "--margin", f"{-high + 0.01:.4f}")) == 0
    assert "v3 holds up against v2" in capsys.readouterr().out and registry.current() == "v3"


def test_watch_rolls_back_a_damaged_folder(days, tmp_path, capsys):
    _, _, reg, files = days
    registry = copy_of(reg, tmp_path)
    # the copy's records name the original's folders: give v2 a folder of its own to damage
    record = registry.get("v2")
    shutil.copytree(record["model"], tmp_path / "v2-model")
    registry.update({**record, "model": str(tmp_path / "v2-model")})
    (tmp_path / "v2-model" / "model.safetensors").write_bytes(b"broken")
    checks_before = len(registry.get("v2").get("checks", []))
    capsys.readouterr()
    assert main(check_args(registry.root, files, "--times", "1", "--interval", "0", action="watch")) == 0
    out = capsys.readouterr().out
    assert out.startswith("[watch] ") and "v1 is current again (was v2): model folder" in out
    assert "fails verification" in out and registry.history() == ["v1"]
    event = registry.last_event()
    assert event["action"] == "check: rollback v2" and "fails verification" in event["reasons"][0]
    assert len(registry.get("v2").get("checks", [])) == checks_before  # as versions check: no entry for a broken folder


def test_one_version_has_nothing_to_check_and_bad_input_is_one_line(days, tmp_path, capsys):
    _, _, reg, files = days
    registry = copy_of(reg, tmp_path)
    registry.set_history(["v1"], "back to v1 for this test")
    events = len(registry.events())
    assert main(check_args(registry.root, files)) == 0
    assert "nothing to check against: v1 is the only version current so far" in capsys.readouterr().out
    assert len(registry.events()) == events and "checks" not in registry.get("v1")
    assert main(["rank", "check", "--registry", str(registry.root)]) == 2
    err = capsys.readouterr().err
    assert "held_out" in err and err.count("\n") == 1
    assert main(check_args(registry.root, files, "--margin", "-1")) == 2
    assert "margin" in capsys.readouterr().err
