"""What dpokit writes, dpokit reads: the chain on the tiny model. ``dpo --lora`` writes an adapter
folder and checkpoints; both are evaluated; training continues from the adapter (a fresh adapter on
its merged weights, or the full model), with a reference equal to the starting policy; an online
run with LoRA goes two rounds; registry versions load as ``registry:DIR@vN``, after promote and
rollback too; and an adapter whose base is gone fails with one line."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from peft import PeftModel

from dpokit.cli import main
from dpokit.errors import UserError
from dpokit.policies.lm.logprobs import completion_logps
from dpokit.store.versions import pin_version
from dpokit.losses import get_loss
from dpokit.policies.lm.load import load_model, load_tokenizer, resolve_model_path
from dpokit.train.objective import make_batch
from dpokit.policies.lm.policy import CausalLM
from dpokit.train.setup import build_reference
from helpers.online import tiny_online, write_prompts
from helpers import config, metrics, tiny_model_dir, write_pairs

STEP = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--max-length", "64", "--max-prompt-length", "32",
        "--no-progress"]


def dpo(model, data: Path, out: Path, *extra) -> int:
    return main(["dpo", "--model", str(model), "--data", str(data), "--output", str(out), *STEP, *map(str, extra)])


def evaluate(model, ref, prompts: Path, out: Path) -> int:
    return main(["eval", "--model", str(model), "--ref-model", str(ref), "--prompts", str(prompts),
                 "--judge", "helpers.judges:count_e", "--max-new-tokens", "4", "--output", str(out)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """v1: ``dpo --lora`` from the tiny model (checkpoints kept); v2: ``dpo --lora`` continued from v1's adapter."""
    tmp = tmp_path_factory.mktemp("chain")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=8)
    prompts, reg = write_prompts(tmp / "prompts.jsonl", 2), tmp / "registry"
    assert dpo(model, data, tmp / "lora", "--lora", "--lora-r", 4, "--save-steps", 1, "--registry", reg) == 0
    assert dpo(tmp / "lora" / "final", data, tmp / "lora2", "--lora", "--lora-r", 4, "--ref", "adapter",
               "--registry", reg) == 0
    return tmp, model, data, prompts, reg


def logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return completion_logps(model.eval(), batch, 2).sum


def test_adapter_folder_and_checkpoint_load_and_evaluate(runs):
    tmp, model, _, prompts, _ = runs
    final = tmp / "lora" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "config.json").exists()
    source = resolve_model_path(str(final))
    assert source.kind == "adapter" and source.base.path == str(model.resolve())
    assert evaluate(final, model, prompts, tmp / "eval-adapter") == 0
    ckpt = tmp / "lora" / "checkpoint-1"  # an adapter without a tokenizer: the run's starting model has it
    assert not (ckpt / "tokenizer.json").exists() and load_tokenizer(str(ckpt)).get_vocab()
    assert evaluate(ckpt, final, prompts, tmp / "eval-ckpt") == 0
    report = json.loads((tmp / "eval-adapter" / "eval_report.json").read_text())
    assert report["prompts"] == 2
    # merged on load: the same log-probs as peft's own adapter-applied model
    (tmp / "x").mkdir(exist_ok=True)
    kind = CausalLM.from_config(config(final, tmp / "pairs.jsonl", tmp / "x"))
    records = kind.records(str(tmp / "pairs.jsonl"), "pair", "t", lambda *_: None)
    batch = make_batch(kind, records, [0, 1, 2, 3], "t", "cpu")
    peft_model = PeftModel.from_pretrained(load_model(str(model)), str(final))
    assert torch.allclose(logps(load_model(str(final)), batch), logps(peft_model, batch), atol=1e-5)
    assert not torch.allclose(logps(load_model(str(final)), batch), logps(load_model(str(model)), batch), atol=1e-3)


def test_continued_lora_starts_from_the_adapter_and_its_reference_is_that_policy(runs):
    tmp, model, data, _, _ = runs
    first = metrics(tmp / "lora2")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapter off == the policy it started from
    saved = json.loads((tmp / "lora2" / "final" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str((tmp / "lora" / "final").resolve())  # a chain of adapters
    # step 0, built as training builds it: reference log-probs are the starting policy's, not the bare base's
    cfg = config(tmp / "lora" / "final", data, tmp / "ref-check", lora__enabled=True, lora__r=4, train__ref="adapter")
    kind = CausalLM.from_config(cfg)
    (tmp / "ref-check").mkdir()
    records = kind.records(str(data), "pair", "train", lambda *_: None)
    reference, policy = build_reference(cfg, get_loss("sigmoid"), kind, kind.load(cfg.model.path), {"train": records},
                                        contextlib.nullcontext, lambda *_: None, Accelerator())
    batch = make_batch(kind, records, [0, 1, 2, 3], "train", "cpu")
    start = load_model(str(tmp / "lora" / "final"))
    ref = reference.logps(batch, 2)
    assert torch.allclose(ref.tokens.mul(ref.mask).sum(-1), logps(start, batch), atol=1e-5)
    assert torch.allclose(logps(policy, batch), logps(start, batch), atol=1e-5)
    assert not torch.allclose(logps(start, batch), logps(load_model(str(model)), batch), atol=1e-3)
    load_model(str(tmp / "lora2" / "final"))  # base + adapter 1 + adapter 2


def test_full_training_from_an_adapter_merges_it(runs):
    tmp, _, data, _, _ = runs
    out = tmp / "full"
    assert dpo(tmp / "lora" / "final", data, out, "--save-steps", 1) == 0
    assert (out / "final" / "config.json").is_file() and not (out / "final" / "adapter_config.json").exists()
    assert metrics(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference = the merged start
    ckpt = out / "checkpoint-1"  # a full model without a tokenizer: the tokenizer of the adapter it started from
    assert (ckpt / "config.json").is_file() and not (ckpt / "tokenizer.json").exists()
    assert resolve_model_path(str(ckpt)).tokenizer_source().folder == str(tmp / "lora" / "final")
    assert load_tokenizer(str(ckpt)).get_vocab() and load_model(str(ckpt)) is not None


def test_online_lora_trains_two_rounds(tmp_path):
    out = tmp_path / "online"
    result = tiny_online(tmp_path, out, lora__enabled=True, lora__r=4, online__rounds=2, train__max_steps=2)
    assert [e["round"] for e in result.rounds] == [1, 2]
    second = out / "round-2" / "final"
    assert resolve_model_path(str(second)).base.path == str((out / "round-1" / "final").resolve())
    assert result.rounds[1]["start_model"] == str(out / "round-1" / "final")


def test_registry_versions_load_after_promote_and_rollback(runs, capsys, monkeypatch):
    tmp, model, _, prompts, reg = runs
    for command in (["promote", "v1"], ["promote", "v2"], ["rollback"]):
        assert main(["versions", *command, "--registry", str(reg)]) == 0
    assert resolve_model_path(f"registry:{reg}@v2").path == str((tmp / "lora2" / "final").resolve())
    assert resolve_model_path(f"registry:{reg}").path == str((tmp / "lora" / "final").resolve())  # v1 again
    assert resolve_model_path(f"registry:{reg}@current").path == resolve_model_path(f"registry:{reg}").path
    assert pin_version(f"registry:{reg}") == str(tmp / "lora" / "final") and pin_version(str(model)) == str(model)
    monkeypatch.setenv("DPOKIT_REGISTRY", str(reg))
    assert resolve_model_path("registry:@v2").path == str((tmp / "lora2" / "final").resolve())
    assert evaluate("registry:@v2", f"registry:{reg}@v1", prompts, tmp / "eval-registry") == 0
    assert dpo(f"registry:{reg}@v2", tmp / "pairs.jsonl", tmp / "from-v2", "--lora", "--lora-r", 4) == 0
    saved = yaml.safe_load((tmp / "from-v2" / "config.yaml").read_text())["model"]["path"]
    assert saved == str(tmp / "lora2" / "final")  # pinned: a later promote does not change what it started from
    with pytest.raises(UserError, match="no such version"):
        resolve_model_path(f"registry:{reg}@v9")
    monkeypatch.delenv("DPOKIT_REGISTRY")
    with pytest.raises(UserError, match="DPOKIT_REGISTRY is not set"):
        resolve_model_path("registry:@v1")


def test_adapter_whose_base_is_gone(runs, capsys):
    tmp, model, _, prompts, _ = runs
    moved = tmp / "moved" / "final"
    shutil.copytree(tmp / "lora" / "final", moved)
    config_file = moved / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "/gone/base"}))
    capsys.readouterr()
    assert evaluate(moved, model, prompts, tmp / "eval-moved") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base model is not found" in err and "/gone/base" in err
    # the run's saved config names the starting model: that is the base then
    (moved.parent / "config.yaml").write_text(yaml.safe_dump({"model": {"path": str(model)}}))
    assert resolve_model_path(str(moved)).base.path == str(model.resolve())
