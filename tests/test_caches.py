"""Caches are right or empty: every setting that changes a cached value is in its key, so a
shared cache folder never hands one run another's values. Each test changes the settings one at
a time and sees a new key (and the same key again for the same settings)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing

from accelerate import Accelerator

from dpokit.config import DataConfig, RunConfig
from dpokit.data.cache import NOT_SETTINGS, cache_key
from dpokit.eval.judges import FunctionJudge
from dpokit.train.setup import reference_settings


def other_value(value, annotation):
    """A different value of a field's type (``cache_key`` hashes, it does not validate)."""
    choices = [a for a in typing.get_args(annotation) if isinstance(a, str) and a != value]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if choices:
        return choices[0]
    return f"{value}x" if isinstance(value, str) else "x"


def test_every_data_setting_is_in_the_tokenized_data_key(tmp_path, tiny_tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q", "chosen": " a", "rejected": " b"}\n')
    hints = typing.get_type_hints(DataConfig)
    base = DataConfig()
    key = cache_key(data, "pair", tiny_tokenizer, base, 64, 32)
    assert cache_key(data, "pair", tiny_tokenizer, DataConfig(), 64, 32) == key
    seen = {key}
    explicit = ("max_length", "max_prompt_length")  # cache_key's own arguments (the run may set them)
    fields = [f.name for f in dataclasses.fields(DataConfig) if f.name not in NOT_SETTINGS + explicit]
    assert len(fields) > 5
    for name in fields:
        changed = dataclasses.replace(base, **{name: other_value(getattr(base, name), hints[name])})
        seen.add(cache_key(data, "pair", tiny_tokenizer, changed, 64, 32))
    seen |= {cache_key(data, "sft", tiny_tokenizer, base, 64, 32), cache_key(data, "pair", tiny_tokenizer, base, 65, 32),
             cache_key(data, "pair", tiny_tokenizer, base, 64, 31)}
    assert len(seen) == len(fields) + 4


def test_every_batch_and_kernel_setting_is_in_the_reference_key():
    """The reference cache key holds the resolved precision and every training setting that
    decides how the reference's batches are laid out; each one changed gives another key."""
    accelerator, cfg = Accelerator(), RunConfig()
    base = reference_settings(cfg, accelerator)
    assert {"device", "torch", "engine", "processes"} <= base.keys()
    changes = {"batch_size": 3, "grad_accum": 2, "seed": 7, "share_prompt": False, "pack": False,
               "logprob_chunk": 64, "dtype": "bf16" if base["dtype"] == "fp32" else "fp32"}
    for name, value in changes.items():
        other = RunConfig()
        setattr(other.train, name, value)
        assert reference_settings(other, accelerator) != base, name


def test_editing_a_function_judge_makes_it_another_judge(tmp_path, monkeypatch):
    module = tmp_path / "my_judge.py"
    module.write_text("def judge(prompt, response):\n    return len(response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = FunctionJudge("my_judge:judge").identity
    assert FunctionJudge("my_judge:judge").identity == first
    module.write_text("def judge(prompt, response):\n    return -len(response)\n")
    importlib.invalidate_caches()
    importlib.reload(sys.modules["my_judge"])
    assert FunctionJudge("my_judge:judge").identity != first
    assert first.startswith("my_judge:judge:")
