"""``dpokit rank update``: a ranker's daily update on the simulator. A good day's challenger is
promoted with figures that an independent computation gives again (SNIPS of both rankers, their
paired gain, the KL by a naive loop); a rerun trains nothing; a day of flipped clicks is refused
and the champion keeps serving; a held lock and a current version that is no ranker are one-line
errors with exit code 2."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.policies.ranker import load_ranker, score_contexts
from dpokit.rank.logs import off_policy_data, read_log
from dpokit.rank.ope import estimate, estimate_terms, normal_interval
from dpokit.rank.simulate import SlatePolicy, ranker_scorer
from dpokit.store.atomic import atomic_folder, folder_digest
from dpokit.store.versions import Registry, promote
from dpokit.update.lock import registry_lock

from helpers.rank import TRAIN, ranker_registry


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A registry whose current version v1 is a ranker trained on day 0's clicks; day 1's log, its
    flipped twin and a held-out log of the same world."""
    tmp = tmp_path_factory.mktemp("rank_update")
    world, reg, files = ranker_registry(tmp)
    return tmp, world, reg, files


def args(reg, files, which, *extra):
    return ["rank", "update", "--registry", str(reg), "--log", str(files[which]), "--held-out", str(files["held"]),
            "--max-kl", "0.5", *TRAIN, *extra]


def naive_kl(champion: str, challenger: str, records) -> float:
    """KL(challenger ‖ champion) of softmax over all items, one context per impression, averaged."""
    first = {}
    for r in records:
        first.setdefault(r.impression, r.context)
    a, b = load_ranker(champion), load_ranker(challenger)
    total = 0.0
    for ctx in first.values():
        p = torch.log_softmax(score_contexts(b, [ctx], "t")[0].double(), 0)
        q = torch.log_softmax(score_contexts(a, [ctx], "t")[0].double(), 0)
        total += float((p.exp() * (p - q)).sum())
    return total / len(first)


def test_a_good_day_is_promoted_and_a_flipped_one_refused(day, capsys):
    tmp, world, reg, files = day
    registry = Registry(reg)
    assert main(args(reg, files, "day")) == 0
    assert "v2 promoted over v1" in capsys.readouterr().out
    assert registry.current() == "v2"
    record = registry.get("v2")
    f, decision = record["update"]["figures"], record["update"]["decision"]
    assert decision["promoted"] and decision["reasons"] == [] and record["parent"] == "v1"
    assert decision["rule"] == {"min_gain": 0.0, "max_kl": 0.5}
    assert registry.events()[-1]["action"] == "update v1 -> v2: promoted"

    # the figures again, independently: SNIPS of each ranker by dpokit.rank.ope.estimate, the KL by a loop
    held = read_log(files["held"], world.item_ids)
    champion, challenger = registry.get("v1")["model"], record["model"]
    snips = {}
    for side, folder in (("champion", champion), ("challenger", challenger)):
        data = off_policy_data(held, SlatePolicy(ranker_scorer(folder, world.item_ids), "softmax"), world.item_ids)
        estimates = {e.method: e for e in estimate(data)}
        snips[side] = estimates["SNIPS"]
        dr_value, dr_terms = estimate_terms(data, "dr")  # the other estimator the rule may read
        dr = normal_interval("DR", dr_value, dr_terms)
        assert (dr.value, dr.low, dr.high) == pytest.approx((estimates["DR"].value, estimates["DR"].low,
                                                             estimates["DR"].high), rel=1e-9)
        assert f[side]["value"] == pytest.approx(snips[side].value, rel=1e-9)
        assert (f[side]["low"], f[side]["high"]) == pytest.approx((snips[side].low, snips[side].high), rel=1e-9)
    gain = f["gain"]
    assert gain["value"] == pytest.approx(snips["challenger"].value - snips["champion"].value, rel=1e-9)
    assert gain["low"] > 0  # the rule's test; the pairing makes it narrower than the two intervals apart
    assert gain["high"] - gain["low"] < (f["challenger"]["high"] - f["challenger"]["low"])
    assert f["kl"] == pytest.approx(naive_kl(champion, challenger, held), rel=1e-6) and 0 < f["kl"] <= 0.5
    # the simulator's truth, beside nothing here: recorded only when a sidecar is given
    assert "true" not in f

    # the same day again: nothing trained, nothing promoted twice
    versions = registry.ids()
    assert main(args(reg, files, "day")) == 0
    assert registry.ids() == versions and registry.events()[-1]["action"] == "update v1 -> v2: promoted"

    # flipped clicks: the challenger learns the users' dislikes, and is refused
    sidecar = tmp / "simulator.json"  # the world's config: the true values are recorded too
    sidecar.write_text(json.dumps({"config": asdict(world.cfg)}))
    assert main(args(reg, files, "flipped", "--truth", str(sidecar))) == 0
    out = capsys.readouterr().out
    assert "v3 refused against v2" in out and "refused: SNIPS gain interval low" in out
    assert registry.current() == "v2"
    refused = registry.get("v3")["update"]
    assert not refused["decision"]["promoted"] and refused["figures"]["gain"]["high"] < 0
    assert registry.events()[-1]["action"] == "update v2 -> v3: refused"
    true = refused["figures"]["true"]
    for side, vid in (("champion", "v2"), ("challenger", "v3")):
        policy = SlatePolicy(ranker_scorer(registry.get(vid)["model"], world.item_ids), "softmax")
        assert true[side]["click_rate"] == pytest.approx(world.true_values(policy)["click_rate"], rel=1e-9)
    assert true["challenger"]["click_rate"] < true["champion"]["click_rate"]


def test_errors_are_one_line_and_exit_2(day, tmp_path, capsys):
    _, _, reg, files = day
    with registry_lock(reg):
        assert main(args(reg, files, "day", "--lr", "0.03")) == 2
    assert "another update holds this registry" in capsys.readouterr().err
    # a registry whose current version is no ranker folder
    other = tmp_path / "lm"
    (other / "versions").mkdir(parents=True)
    with atomic_folder(tmp_path / "model", "model") as folder:
        (folder / "config.json").write_text("{}")
    registry = Registry(other)
    vid = registry.add({"created": "now", "model": str(tmp_path / "model"),
                        "model_sha256": folder_digest(tmp_path / "model"), "parent": None, "parent_model": None,
                        "loss": "sft", "steps": 1, "data": {}})
    promote(registry, vid)
    assert main(args(other, files, "day")) == 2
    err = capsys.readouterr().err
    assert "is not an item_ranker folder" in err and "v1 is still current" in err and err.count("\n") == 1
    # settings the update makes itself
    assert main([*args(reg, files, "day"), "--model", "x"]) == 2
    assert main(["rank", "update", "--registry", str(reg), "--log", str(files["day"])]) == 2
    assert "daily.held_out" in capsys.readouterr().err
    assert main(["rank", "update", "--registry", str(reg), "--log", str(files["day"]), "--held-out",
                 str(files["day"])]) == 2
    assert "is the day's log" in capsys.readouterr().err


def test_a_crash_after_training_continues_at_the_evaluation(day, tmp_path):
    """A crash between training and deciding (here: raised from the log line the evaluation
    writes) leaves the champion current and the challenger registered once; the same command
    again continues at the evaluation, trains nothing, and decides."""
    import shutil

    from dpokit.cli import RANK_FLAG_SETS, build_parser
    from dpokit.config.flags import overrides
    from dpokit.config.rank import RankUpdateConfig
    from dpokit.update.rank import rank_update

    _, _, reg, files = day
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy, ignore=shutil.ignore_patterns("updates"))
    registry = Registry(copy)
    registry.set_history(["v1"], "back to v1 for this test")
    ns = build_parser().parse_args(args(copy, files, "day", "--seed", "1"))  # another update than the first test's
    cfg = load_config(None, overrides(ns, RANK_FLAG_SETS["update"]), root=RankUpdateConfig)

    def crash(line: str) -> None:
        if line.startswith("[rank update] SNIPS"):
            raise RuntimeError("killed")
    before = registry.ids()
    with pytest.raises(RuntimeError):
        rank_update(cfg, log=crash)
    assert registry.current() == "v1" and len(registry.ids()) == len(before) + 1
    lines: list[str] = []
    state = rank_update(cfg, log=lines.append)
    assert any("continuing at evaluate" in line for line in lines)
    assert len(registry.ids()) == len(before) + 1 and state["step"] == "done"
    assert registry.current() == state["challenger"] and state["decision"]["promoted"]
