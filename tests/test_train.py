"""The training loop: equivalences that must hold exactly, checkpoints, metrics, LoRA."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpokit.train import train
from dpokit.train.optim import lr_factor
from helpers import config, final_weights, metrics, tiny_model_dir, write_pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return tmp, tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=16)


def assert_close_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_accumulation_equals_full_batch(setup):
    """4 micro-batches of 1 == 2 of 2 == 1 batch of 4: same weights and same step metrics."""
    tmp, model, data = setup
    runs = {}
    for bs, k in ((4, 1), (2, 2), (1, 4)):
        out = tmp / f"accum-{bs}x{k}"
        train(config(model, data, out, train__batch_size=bs, train__grad_accum=k, train__ref="copy"))
        runs[(bs, k)] = (final_weights(out), metrics(out))
    ref_w, ref_m = runs[(4, 1)]
    for key in ((2, 2), (1, 4)):
        w, m = runs[key]
        assert_close_weights(w, ref_w, atol=1e-5)
        for name in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "kl/approx"):
            for step_a, step_b in zip(m, ref_m):
                if name in step_a:
                    assert step_a[name] == pytest.approx(step_b[name], rel=1e-5, abs=1e-5), (key, name)
    # The runs moved: otherwise the comparison above proves nothing.
    start = AutoModelForCausalLM.from_pretrained(model).state_dict()
    assert (ref_w["model.norm.weight"] - start["model.norm.weight"]).abs().max() > 1e-4


def test_copy_and_precomputed_reference_agree(setup):
    tmp, model, data = setup
    outs = {}
    for ref in ("copy", "precomputed"):
        outs[ref] = tmp / f"ref-{ref}"
        train(config(model, data, outs[ref], train__ref=ref, data__eval=str(data)))
    m_copy, m_cache = metrics(outs["copy"]), metrics(outs["precomputed"])
    assert len(m_copy) == len(m_cache) == 4  # 3 steps + the final eval line
    for a, b in zip(m_copy, m_cache):
        for k in a:
            if k not in ("tokens_per_s", "step_s", "epoch"):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), k
    assert m_copy[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # π = π_ref at step 0
    assert_close_weights(final_weights(outs["copy"]), final_weights(outs["precomputed"]), atol=1e-5)
    # A second run finds the cache instead of recomputing it.
    cached = list((tmp / "refcache").glob("*.safetensors"))
    assert cached
    train(config(model, data, tmp / "ref-again", train__ref="precomputed"))
    assert sorted((tmp / "refcache").glob("*.safetensors")) == sorted(cached)


def test_bf16_precomputed_reference_is_the_live_one_bitwise(setup):
    """The precompute runs training's own micro-batches, so even in bf16 (whose rounding depends
    on how a batch is laid out) the cached values are exactly what a live copy computes:
    the step-0 loss is ln 2 and the first epoch's metrics are identical."""
    tmp, model, data = setup
    runs = {}
    for ref in ("copy", "precomputed"):
        out = tmp / f"bf16-{ref}"
        train(config(model, data, out, train__ref=ref, train__bf16=True, train__batch_size=3, train__grad_accum=2,
                     train__max_steps=2, train__ref_cache_dir=str(tmp / "bf16-cache")))
        runs[ref] = metrics(out)
    assert runs["precomputed"][0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    for a, b in zip(runs["copy"], runs["precomputed"]):
        for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/ref_chosen"):
            if k in a:
                assert a[k] == b[k], k


def test_resume_gives_identical_weights(setup):
    tmp, model, data = setup
    full = tmp / "resume-full"
    train(config(model, data, full, train__max_steps=6, train__ref="precomputed"))
    part = tmp / "resume-part"
    train(config(model, data, part, train__max_steps=6, train__save_steps=3, train__ref="precomputed"))
    ckpt = part / "checkpoint-3"
    for name in ("model.safetensors", "optimizer.safetensors", "scheduler.safetensors", "rng.safetensors",
                 "trainer_state.json", "metrics.json", "config.yaml", "manifest.json"):
        assert (ckpt / name).is_file(), name
    # As if killed after step 3: drop everything written later, then resume.
    import shutil

    shutil.rmtree(part / "final")
    result = train(config(model, data, part, train__max_steps=6, train__save_steps=3, train__ref="precomputed",
                          train__resume=True))
    assert result.steps == 6
    a, b = final_weights(full), final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    steps = [m["step"] for m in metrics(part) if "loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_metrics_and_final_model(setup):
    tmp, model, data = setup
    out = tmp / "metrics"
    train(config(model, data, out, data__eval=str(data), train__eval_steps=2, train__max_steps=4))
    lines = metrics(out)
    step_lines = [m for m in lines if "loss" in m]
    eval_lines = [m for m in lines if "eval/loss" in m]
    assert [m["step"] for m in step_lines] == [1, 2, 3, 4]
    assert [m["step"] for m in eval_lines] == [2, 4]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logps/chosen_per_token", "logps/rejected_per_token", "kl/approx", "grad_norm",
                "lr", "tokens_per_s", "step_s"):
        assert key in step_lines[0], key
    m = step_lines[-1]
    assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-6)
    assert 0.0 <= m["rewards/accuracies"] <= 1.0 and m["kl/approx"] >= 0
    loaded = AutoModelForCausalLM.from_pretrained(out / "final")
    assert loaded.num_parameters() > 0


def test_sft_learns(setup):
    tmp, model, data = setup
    out = tmp / "sft"
    train(config(model, data, out, loss__name="sft", train__max_steps=8, train__lr=3e-3))
    losses = [m["loss"] for m in metrics(out)]
    assert losses[-1] < losses[0] - 0.5
    assert "rewards/accuracies" not in metrics(out)[0]


def test_lora_with_adapter_reference(setup):
    tmp, model, data = setup
    out = tmp / "lora"
    train(config(model, data, out, lora__enabled=True, lora__r=4, train__ref="adapter", train__lr=1e-2,
                 lora__merge=False))
    first = metrics(out)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapters start at zero
    assert metrics(out)[-1]["loss"] < first["loss"]
    assert (out / "final" / "adapter_config.json").is_file()
    merged = tmp / "lora-merged"
    train(config(model, data, merged, lora__enabled=True, lora__r=4, train__ref="copy", lora__merge=True))
    AutoModelForCausalLM.from_pretrained(merged / "final")


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_other_optimizers(setup, optimizer):
    tmp, model, data = setup
    out = tmp / f"opt-{optimizer}"
    train(config(model, data, out, train__optimizer=optimizer, train__max_steps=2, train__lr=0.05))
    start = AutoModelForCausalLM.from_pretrained(model).state_dict()
    assert not torch.equal(final_weights(out)["model.norm.weight"], start["model.norm.weight"])


def test_lr_schedule():
    """warm-up 2 of 10 steps: 1/3, 2/3, then cosine from 1 down towards 0."""
    assert [round(lr_factor(s, 2, 10, "cosine"), 6) for s in (0, 1, 2)] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 0, 10, "constant") == 1.0


def test_bf16_autocast_runs(setup):
    tmp, model, data = setup
    out = tmp / "bf16"
    train(config(model, data, out, train__bf16=True, train__max_steps=2))
    assert all(math.isfinite(m["loss"]) for m in metrics(out))
    assert final_weights(out)["model.norm.weight"].dtype == torch.float32  # weights stay fp32


def test_fast_logprob_options_train_like_the_plain_path(setup):
    """Shared prompts + packing + chunked head (the defaults) and the plain padded path train to
    the same weights and metrics over 3 steps (fp32)."""
    tmp, model, data = setup
    fast, plain = tmp / "fast-default", tmp / "fast-plain"
    train(config(model, data, fast, train__ref="copy", train__logprob_chunk=7))
    train(config(model, data, plain, train__ref="copy", train__logprob_chunk=0, train__share_prompt=False,
                 train__pack=False))
    assert_close_weights(final_weights(fast), final_weights(plain), atol=1e-5)
    for a, b in zip(metrics(fast), metrics(plain)):
        for k in ("loss", "rewards/margins", "logps/chosen"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), k
