"""Model versions: two runs registered with their lineage, then list, promote, show, rollback and
diff through the command line, an evaluation attached, and ids that concurrent runs cannot share."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import EvalConfig, RunConfig, load_config
from dpokit.online.config import OnlineConfig
from dpokit.train import train
from dpokit.store.versions import Registry
from helpers import config, tiny_model_dir, write_pairs

TASK = Path(__file__).resolve().parents[1] / "dpokit" / "tasks" / "reviews_data"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1: SFT from a tiny model; v2: DPO from v1's model, with held-out data."""
    tmp = tmp_path_factory.mktemp("versions")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=12)
    reg = tmp / "registry"
    train(config(model, data, tmp / "sft", loss__name="sft", train__registry=str(reg)))
    train(config(tmp / "sft" / "final", data, tmp / "dpo", train__lr=5e-4, data__eval=str(data),
                 train__registry=str(reg)))
    return tmp, reg


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_runs_are_registered_with_their_lineage(registry):
    tmp, reg = registry
    v1, v2 = Registry(reg).get("v1"), Registry(reg).get("v2")
    assert v1["parent"] is None and v1["reference"] is None and v1["loss"] == "sft"
    assert v2["model"] == str(tmp / "dpo" / "final") and v2["parent"] == "v1"
    assert v2["parent_model"] == str(tmp / "sft" / "final")
    assert v2["reference"] == {"model": str(tmp / "sft" / "final"), "version": "v1"}
    assert v2["data"]["train"]["sha256"] == v1["data"]["train"]["sha256"]  # same file
    assert v2["data"]["train"]["tokens_sha256"] != v1["data"]["train"]["tokens_sha256"]  # pairs vs SFT records
    assert set(v2["data"]) == {"train", "eval"} and v2["config"]["train"]["lr"] == 5e-4
    assert v2["steps"] == 3 and "loss" in v2["metrics"] and "rewards/accuracies" in v2["eval_metrics"]


def test_promote_show_rollback_diff(registry, capsys):
    _, reg = registry
    r = ["--registry", str(reg)]
    code, out, _ = cli(capsys, "versions", "list", *r)
    assert code == 0 and "v1" in out and "v2" in out and out.strip().endswith("current: none")
    assert cli(capsys, "versions", "promote", "v1", *r)[1].strip() == "v1 is now current (was none)"
    assert cli(capsys, "versions", "promote", "v2", *r)[1].strip() == "v2 is now current (was v1)"
    code, out, _ = cli(capsys, "versions", "list", *r)
    assert "* v2" in out and "current: v2 (history: v1 -> v2)" in out
    code, out, _ = cli(capsys, "versions", "show", *r)
    assert out.startswith("v2 (current)") and "[verified]" in out and "parent     v1" in out
    assert cli(capsys, "versions", "rollback", *r)[1].strip() == "v1 is current again (was v2)"
    code, _, err = cli(capsys, "versions", "rollback", *r)
    assert code == 2 and "nothing to roll back to" in err
    code, out, _ = cli(capsys, "versions", "diff", "v1", "v2", *r)
    assert code == 0
    assert "  loss.name: 'sft' -> 'sigmoid'" in out and "  train.lr: 0.001 -> 0.0005" in out
    assert "  parent: None -> 'v1'" in out
    loss_line = next(line for line in out.splitlines() if line.startswith("loss "))
    assert len(loss_line.split()) == 4  # metric, v1, v2, change
    code, out, _ = cli(capsys, "versions", "show", "v2", "--json", *r)
    assert json.loads(out)["config"]["loss"]["name"] == "sigmoid"


def test_diff_reads_a_renamed_field_under_its_new_name(registry, capsys):
    """A version saved before ``train.cache_dir`` became ``train.ref_cache_dir`` differs from a
    newer one only where their values differ, not in the field's name."""
    from dpokit.store.versions import Registry

    _, reg = registry
    versions = Registry(reg)
    old = versions.get("v1")
    train = old["config"]["train"]
    train["cache_dir"] = train.pop("ref_cache_dir")
    versions.update(old)
    code, out, _ = cli(capsys, "versions", "diff", "v1", "v2", "--registry", str(reg))
    assert code == 0 and "cache_dir" not in out


def test_promote_refuses_a_changed_model(registry, capsys):
    tmp, reg = registry
    weights = tmp / "dpo" / "final" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + bytes(8))
    try:
        code, _, err = cli(capsys, "versions", "promote", "v2", "--registry", str(reg))
    finally:
        weights.write_bytes(original)
    assert code == 2 and "not promoted" in err and "model.safetensors does not match" in err


def test_eval_attaches_its_report(registry, capsys):
    tmp, reg = registry
    code, out, err = cli(capsys, "eval", "--model", str(tmp / "dpo" / "final"), "--ref-model",
                         str(tmp / "sft" / "final"), "--prompts", str(TASK / "prompts.jsonl"), "--num-prompts", "4",
                         "--judge", "dpokit.tasks.reviews:judge", "--max-new-tokens", "4", "--registry", str(reg))
    assert code == 0, err
    assert f"report attached to v2 in {reg}" in out
    attached = Registry(reg).get("v2")["eval"]
    assert attached["report"]["prompts"] == 4 and attached["reference_model"] == str(tmp / "sft" / "final")
    assert "report/win_rate" in cli(capsys, "versions", "show", "v2", "--registry", str(reg))[1]


def test_every_registry_setting_falls_back_to_the_environment(registry, capsys, monkeypatch):
    """$DPOKIT_REGISTRY stands for --registry in eval (run here), training and online (their
    configs), and versions; a given --registry wins."""
    tmp, reg = registry
    monkeypatch.setenv("DPOKIT_REGISTRY", str(reg))
    code, out, err = cli(capsys, "eval", "--model", str(tmp / "dpo" / "final"), "--ref-model",
                         str(tmp / "sft" / "final"), "--prompts", str(TASK / "prompts.jsonl"), "--num-prompts", "2",
                         "--judge", "dpokit.tasks.reviews:judge", "--max-new-tokens", "2")
    assert code == 0, err
    assert f"report attached to v2 in {reg}" in out
    assert RunConfig().train.registry == OnlineConfig().train.registry == EvalConfig().registry == str(reg)
    assert load_config(None, {"model.path": "m", "data.train": "d", "train.registry": "other"}).train.registry == "other"
    assert "current: " in cli(capsys, "versions", "list")[1]


def test_registry_errors(registry, capsys, tmp_path, monkeypatch):
    _, reg = registry
    monkeypatch.delenv("DPOKIT_REGISTRY", raising=False)
    assert "--registry: is required" in cli(capsys, "versions", "list")[2]
    assert "registry folder not found" in cli(capsys, "versions", "list", "--registry", str(tmp_path / "no"))[2]
    code, _, err = cli(capsys, "versions", "show", "v9", "--registry", str(reg))
    assert code == 2 and "no such version" in err and "known: v1, v2" in err
    assert "not a version id" in cli(capsys, "versions", "show", "../v1", "--registry", str(reg))[2]


def test_concurrent_registrations_get_distinct_ids(tmp_path):
    registry = Registry(tmp_path / "reg")
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(registry.add({"n": i}))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    assert sorted(registry.get(v)["n"] for v in ids) == list(range(8))
    assert [p.name for p in (tmp_path / "reg" / "versions").iterdir() if p.name.startswith(".")] == []
