"""The sampling backend is chosen, not guessed: ``auto`` takes vLLM only after a self-check that
compares it with HF generate has passed (cached per model); vLLM gets a plain HF folder for every
model form. vLLM is not installed here, so the comparison runs between real generators: HF
against HF (must agree) and HF against a generator that answers differently (must not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.policies.lm.load import load_model
from dpokit.online import OnlineConfig
from dpokit.online.sampling import (_hf_generate, cached_check, check_backend, choose_backend, compare_generators,
                                    plain_folder, sample_answers)
from dpokit.train import train
from helpers.online import tiny_settings
from helpers import config, tiny_model_dir, write_pairs


def test_explicit_choices_and_why_auto_falls_back():
    never = lambda: pytest.fail("the self-check must not run where vLLM cannot")  # noqa: E731
    assert choose_backend("hf", never, installed=True, cuda=True).name == "hf"
    for installed, cuda, why in ((False, True, "not installed"), (True, False, "CUDA")):
        choice = choose_backend("auto", never, installed=installed, cuda=cuda)
        assert choice.name == "hf" and why in choice.reason and choice.line().startswith("[backend] sampling with hf")
        with pytest.raises(UserError, match=why):
            check_backend("vllm", installed=installed, cuda=cuda)
    assert choose_backend("vllm", never, installed=True, cuda=True).name == "vllm"
    # auto on a machine that could run vLLM: the self-check decides
    passed = choose_backend("auto", lambda: {"passed": True, "detail": "same", "time": "t", "cached": True},
                            installed=True, cuda=True)
    failed = choose_backend("auto", lambda: {"passed": False, "detail": "prompt 1 differs from token 3"},
                            installed=True, cuda=True)
    assert passed.name == "vllm" and "passed" in passed.reason and "cached from t" in passed.reason
    assert failed.name == "hf" and "failed" in failed.reason and "token 3" in failed.reason


def test_auto_here_samples_with_hf_and_says_why(tmp_path):
    cfg = load_config(None, tiny_settings(tmp_path, tmp_path / "o"), root=OnlineConfig)
    lines: list[str] = []
    answers = sample_answers(cfg, cfg.model.path, [("Say hi", "p:1")], seed=0, log=lines.append)
    assert len(answers[0][0]) == cfg.online.samples_per_prompt
    assert lines == ["[backend] sampling with hf: auto: vllm is not installed (pip install vllm)"]


def test_self_check_compares_real_generators_and_is_cached(tmp_path):
    cfg = load_config(None, tiny_settings(tmp_path, tmp_path / "o"), root=OnlineConfig)
    model = cfg.model.path
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    hf = lambda p: _hf_generate(cfg, model, p, 0)  # noqa: E731 - greedy, so two runs agree exactly
    other = str(tiny_model_dir(tmp_path, seed=1))  # another random model: other greedy tokens
    differs = lambda p: _hf_generate(cfg, other, p, 0)  # noqa: E731
    assert compare_generators(prompts, hf, hf) == {"passed": True, "detail": "the same greedy tokens on 2 prompts"}
    bad = compare_generators(prompts, hf, differs)
    assert not bad["passed"] and "prompt 1 differs" in bad["detail"]
    cache = tmp_path / "backend-checks.json"
    key = {"model": "m", "vllm": "0.0", "device": "cpu", "dtype": "fp32"}
    runs: list[int] = []

    def run():
        runs.append(1)
        return compare_generators(prompts, hf, differs)

    first, again = cached_check(key, run, cache), cached_check(key, run, cache)
    assert runs == [1] and not first["cached"] and again["cached"] and again["passed"] is False
    assert cached_check({**key, "vllm": "0.1"}, lambda: {"passed": True, "detail": "d"}, cache)["passed"]
    assert len(json.loads(cache.read_text())) == 2  # another vLLM version is another check


def test_plain_folder_for_an_adapter_is_a_merged_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=8)
    assert plain_folder(str(model)) == model  # a full folder with its tokenizer is given as it is
    train(config(model, data, tmp_path / "lora", lora__enabled=True, lora__r=4, train__lr=1e-2, train__max_steps=2))
    folder = plain_folder(str(tmp_path / "lora" / "final"))
    assert folder.parent == tmp_path / "cache" / "plain" and (folder / "config.json").is_file()
    AutoTokenizer.from_pretrained(folder, local_files_only=True)
    copy = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).state_dict()
    merged = load_model(str(tmp_path / "lora" / "final")).state_dict()
    assert all(torch.equal(copy[k], v) for k, v in merged.items() if k in copy)
    assert plain_folder(str(tmp_path / "lora" / "final")) == folder  # written once
    assert not Path(tmp_path / "cache" / "plain" / f".{folder.name}.tmp").exists()
