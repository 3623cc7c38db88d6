"""``--pairing list``: each prompt's answers as one ranked list for the listwise losses; the checks
that tie listwise losses to lists (the sampling backend's choice: test_backends.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.online import OnlineConfig
from dpokit.online.pairs import Candidates, form_pairs, list_indices
from helpers.data import read_jsonl
from helpers.online import tiny_online, tiny_settings

TESTS = Path(__file__).resolve().parent


def test_lists_are_ranked_distinct_and_count_ties():
    item = Candidates("p", ["a", "b", "B ", "", "c", "d"], [1.0, 3.0, 3.0, 9.0, 1.0, None])
    # "B " repeats "b"; the empty and the unjudged answers are left out; the tie (a, c) keeps sampling order
    assert list_indices(item, 3, 0.0) == [1, 0, 4]
    assert list_indices(item, 4, 0.0) == []  # only three distinct usable answers
    assert list_indices(item, 3, 2.0) == []  # best − worst = 2 is not > 2
    assert list_indices(Candidates("p", list("abcde"), [5.0, 4.0, 3.0, 2.0, 1.0]), 3, 0.0) == [0, 2, 4]  # spread
    records, stats = form_pairs([item, Candidates("q", ["x", "y", "z"], [0.0, 1.0, 2.0])], "list", 0.0, 3)
    assert records[0] == {"prompt": "p", "completions": ["b", "a", "c"], "scores": [3.0, 1.0, 1.0]}
    assert records[1]["completions"] == ["z", "y", "x"]
    assert (stats.pairs, stats.list_ties, stats.discarded, stats.judge_failures, stats.empty) == (2, 1, 3, 1, 1)


def test_listwise_loss_needs_lists_and_lists_need_a_listwise_loss(tmp_path):
    base = tiny_settings(tmp_path, tmp_path / "x")
    for loss in ("plackett_luce", "lipo", "softmax_dpo"):
        with pytest.raises(UserError, match="add --pairing list"):
            load_config(None, {**base, "loss.name": loss}, root=OnlineConfig)
        cfg = load_config(None, {**base, "loss.name": loss, "online.pairing": "list"}, root=OnlineConfig)
        assert cfg.round_config(1, "m", None, "l.jsonl", "o").data.format == "rated"
    with pytest.raises(UserError, match="online.pairing"):
        load_config(None, {**base, "online.pairing": "list"}, root=OnlineConfig)  # sigmoid takes pairs
    with pytest.raises(UserError, match="online.list_size"):
        load_config(None, {**base, "loss.name": "lipo", "online.pairing": "list", "online.list_size": 5},
                    root=OnlineConfig)


def test_cli_config_errors_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    base = ["--model", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl"), "--judge", "helpers.judges:count_e",
            "--output", str(tmp_path / "out")]
    cases = ((["--loss", "plackett_luce"], "online.pairing"), (["--backend", "vllm"], "online.backend"),
             (["--judge-mode", "pairwise"], "online.judge_mode"))
    for extra, expect in cases:
        r = subprocess.run([sys.executable, "-m", "dpokit.cli", "online", *base, *extra], capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and expect in r.stderr, r.stderr


def test_online_round_trains_plackett_luce_on_lists(tmp_path):
    out = tmp_path / "lists"
    lines: list[str] = []
    entry = tiny_online(tmp_path, out, lines.append, loss__name="plackett_luce", online__pairing="list").rounds[0]
    lists = read_jsonl(out / "round-1" / "pairs.jsonl")
    assert entry["pairs"] == len(lists) >= 1 and entry["train_steps"] >= 1
    assert all(len(r["completions"]) == 4 and r["scores"] == sorted(r["scores"], reverse=True) for r in lists)
    assert all(r["scores"][0] == r["completions"][0][0]["content"].lower().count("e") for r in lists)
    ties = sum(a == b for r in lists for a, b in zip(r["scores"], r["scores"][1:]))
    assert entry["list_ties"] == ties and entry["discarded"] == entry["candidates"] - 4 * len(lists)
    assert f"[online] round 1: {len(lists)} lists, {entry['discarded']} of 24 candidates discarded, {ties} ties in " \
        "lists" in lines
    metrics = read_jsonl(out / "round-1" / "metrics.jsonl")
    assert all("logps/rank4" in m for m in metrics if "loss" in m)  # trained on lists of four


def test_a_run_saved_before_the_new_settings_continues(tmp_path):
    """Settings added later (judge mode, sampling, backend...) count as their defaults in an older
    run's saved config; a non-default value is still a different run."""
    import yaml

    from dpokit.online.loop import _check_settings

    cfg = load_config(None, tiny_settings(tmp_path, tmp_path / "old"), root=OnlineConfig)
    saved = _check_settings(tmp_path / "old", cfg)
    for key in ("sampling", "rso_beta", "backend", "judge_mode", "list_size"):
        del saved["online"][key]
    (tmp_path / "old" / "online_config.yaml").write_text(yaml.safe_dump(saved))
    _check_settings(tmp_path / "old", cfg)
    (tmp_path / "old" / "online_config.yaml").write_text(yaml.safe_dump(saved))
    cfg.online.sampling = "rso"
    with pytest.raises(UserError, match="online.sampling"):
        _check_settings(tmp_path / "old", cfg)
