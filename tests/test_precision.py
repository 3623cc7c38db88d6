"""Precision from the hardware (``--dtype auto``), the bf16 alias, fp16's loss scaler, and the
token count behind ``tokens_per_s``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from dpokit.errors import UserError
from dpokit.precision import native_on_cpu, resolve
from dpokit.train import train
from dpokit.policies.lm.policy import real_tokens
from dpokit.train.optim import LossScaling
from helpers import config, metrics, tiny_model_dir, write_pairs


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DPOKIT_DTYPE", raising=False)
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))


def test_auto_picks_bf16_only_where_the_cpu_has_it(no_env):
    p = resolve("auto", "cpu")
    assert p.name == ("bf16" if native_on_cpu("bf16") else "fp32")
    assert p.reason and "native" in p.reason
    assert resolve("fp32").name == "fp32" and resolve("bf16").name == "bf16"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's ISA cap is an x86 setting")
def test_auto_is_fp32_on_an_avx2_cpu_and_bf16_there_warns_with_the_slowdown(no_env, tmp_path):
    """oneDNN capped at AVX2 behaves as an AVX2-only CPU does: no native bf16 (on a real AVX2
    machine the cap changes nothing). Run in a fresh process, as the cap is read at start-up."""
    code = ("import json; from dpokit.precision import resolve; "
            "print(json.dumps([resolve('auto').name, resolve('bf16').reason]))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    name, warning = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "fp32"
    assert "no native bf16" in warning and "slower than fp32" in warning
    slower = float(warning.split(" ran ")[1].split("x slower")[0])
    assert slower > 3  # emulated bf16 is an order of magnitude or more slower (about 90x measured)
    cached = json.loads((tmp_path / "cache" / "hardware.json").read_text())
    assert len(cached) == 1  # measured once per machine, then read back


def test_dpokit_dtype_is_what_auto_means_on_a_machine(no_env, monkeypatch):
    monkeypatch.setenv("DPOKIT_DTYPE", "fp32")
    assert resolve("auto").name == "fp32" and "DPOKIT_DTYPE" in resolve("auto").reason
    assert resolve("fp16").name == "fp16"  # an explicit choice wins over the machine's default
    monkeypatch.setenv("DPOKIT_DTYPE", "float8")
    with pytest.raises(UserError, match="DPOKIT_DTYPE"):
        resolve("auto")


def test_bf16_is_an_alias_of_dtype(tmp_path):
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "p.jsonl", n=4)
    assert config(model, data, tmp_path / "a", train__bf16=True).train.dtype == "bf16"
    assert config(model, data, tmp_path / "a", train__bf16=False).train.dtype == "fp32"
    assert config(model, data, tmp_path / "a").train.dtype == "auto"
    with pytest.raises(UserError, match="train.bf16"):
        config(model, data, tmp_path / "a", train__bf16=True, train__dtype="fp32")


def test_fp16_trains_with_a_loss_scaler_and_resumes_it(tmp_path):
    """fp16 autocast on the CPU, loss scaled: finite losses, the scale saved in every checkpoint,
    and a resumed run ends where an uninterrupted one does (a constant schedule, so that the first
    part's shorter run has the same learning rates)."""
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "p.jsonl", n=12)
    settings = {"train__dtype": "fp16", "train__ref": "copy", "train__scheduler": "constant"}
    whole = tmp_path / "whole"
    train(config(model, data, whole, train__max_steps=4, **settings))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics(whole))
    part = tmp_path / "part"
    train(config(model, data, part, train__max_steps=2, train__save_steps=1, **settings))
    state = json.loads((part / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["loss_scale"]["scale"] == 65536.0
    train(config(model, data, part, train__max_steps=4, train__resume=True, **settings))
    for a, b in zip(metrics(whole), metrics(part)):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_an_overflowing_scale_skips_the_step_and_halves():
    """Scaled gradients that overflow are the scaler's business: the step is skipped, the scale
    lowered, the weights untouched."""
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaling = LossScaling(torch.amp.GradScaler("cpu", init_scale=2.0 ** 127))
    before = layer.weight.detach().clone()
    loss = (layer(torch.full((2, 4), 1e3)) ** 2).sum()
    scaling.scale(loss).backward()
    scaling.unscale(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    assert scaling.overflowed(loss.item(), norm)
    assert scaling.value == 2.0 ** 126
    assert torch.equal(layer.weight, before)
    assert not LossScaling(None).overflowed(1.0, float("inf"))  # without a scaler it is a bad step: the guard's


def test_tokens_count_each_prompt_once():
    """Pairs: prompt 3 + chosen 2 + rejected 4 = 9 (the prompt is in both rows); KTO's second
    group is another record's completion (its reference point), not data."""
    rows = [[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 3, 3, 3, 3]]  # chosen row, rejected row of one record
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    completion = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    batch = {"input_ids": torch.tensor(rows), "attention_mask": attention, "completion_mask": completion}
    assert real_tokens("pair", batch, 2) == 9
    assert real_tokens("unpaired", batch, 2) == 5
    assert real_tokens("sft", {k: v[:1] for k, v in batch.items()}, 1) == 5


def test_tokens_per_s_is_the_count_over_the_step_time(tmp_path):
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "p.jsonl", n=8)
    out = tmp_path / "run"
    train(config(model, data, out, train__max_steps=2, train__logging_steps=2, train__ref="copy"))
    (line,) = metrics(out)
    from dpokit.data import read_records, tokenize_records
    from dpokit.policies.lm.load import load_tokenizer

    records, _ = tokenize_records(read_records(str(data), "pair"), load_tokenizer(str(model)), 64, 32)
    total = sum(len(r.prompt_ids) + sum(map(len, r.completion_ids)) for r in records)
    assert line["tokens_per_s"] * line["step_s"] * 2 == pytest.approx(total, rel=1e-6)


def test_the_reference_cache_is_keyed_by_the_batches(tmp_path):
    """Precomputed values depend on how batches are laid out (rounding), so another batch size
    computes its own instead of reading the first run's."""
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "p.jsonl", n=8)
    for size in (2, 4, 2):
        train(config(model, data, tmp_path / f"run{size}", train__batch_size=size, train__max_steps=1))
    assert len(list((tmp_path / "refcache").glob("*.safetensors"))) == 2
