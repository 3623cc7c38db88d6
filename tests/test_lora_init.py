"""A LoRA run started from given adapter weights (``lora.init``), and FedProx's proximal term
(``train.proximal_mu``): the two pieces a federated round's local training is made of."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import LoraConfig
from dpokit.data import collate, read_records, tokenize_records
from dpokit.errors import UserError
from dpokit.policies.lm.load import apply_lora, load_model, load_tokenizer
from dpokit.policies.lm.logprobs import completion_logps
from dpokit.train import train
from helpers import config, tiny_model_dir
from helpers.task import pairs, write

BETA = 0.1


def _adapter(base, folder, r: int = 4, seed: int = 1):
    """An adapter W on ``base`` whose B matrices are random (a fresh one is 0: no change at all)."""
    model = apply_lora(load_model(str(base)), LoraConfig(enabled=True, r=r, alpha=8), base=str(base))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def _mean_logps(model, tokenizer, data) -> tuple[float, float]:
    records, _ = tokenize_records(read_records(data, "pair"), tokenizer, 64, 32)
    lp = completion_logps(model.eval(), collate(records, tokenizer.pad_token_id), 2).sum
    return lp[0].mean().item(), lp[1].mean().item()


def _cfg(base, data, out, **kw):
    return config(base, data, out, lora__enabled=True, lora__r=4, lora__alpha=8, train__batch_size=16,
                  train__optimizer="sgd", train__scheduler="constant", train__max_grad_norm=0.0,
                  loss__beta=BETA, **kw)


def test_run_starts_at_the_given_adapter_and_keeps_the_base_as_reference(tmp_path):
    """Step 1's logged log-probs are those of base + W (PeftModel loading W directly), and its
    rewards are β·(log π_W − log π_base): the reference stays the bare base model."""
    from peft import PeftModel

    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "pairs.jsonl", pairs(16, seed=3))
    w = _adapter(base, tmp_path / "w")
    tok = load_tokenizer(str(base))
    direct = PeftModel.from_pretrained(load_model(str(base)), str(w))
    chosen_w, rejected_w = _mean_logps(direct, tok, data)
    chosen_0, _ = _mean_logps(load_model(str(base)), tok, data)
    assert abs(chosen_w - chosen_0) > 0.05  # W changes the policy, so the comparison below can fail

    for init, ref in ((w, "adapter"), (w / "adapter_model.safetensors", "precomputed")):
        out = tmp_path / f"run-{ref}"
        train(_cfg(base, data, out, lora__init=str(init), train__ref=ref, train__max_steps=1, train__lr=1e-9))
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first["logps/chosen"] == pytest.approx(chosen_w, rel=1e-5, abs=1e-4)
        assert first["logps/rejected"] == pytest.approx(rejected_w, rel=1e-5, abs=1e-4)
        assert first["rewards/chosen"] == pytest.approx(BETA * (chosen_w - chosen_0), rel=1e-4, abs=1e-5)


def test_init_of_another_rank_is_refused(tmp_path):
    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "pairs.jsonl", pairs(8, seed=3))
    w = _adapter(base, tmp_path / "w", r=2)
    with pytest.raises(UserError, match="lora.init.*another shape"):
        train(_cfg(base, data, tmp_path / "run", lora__init=str(w), train__max_steps=1))
    with pytest.raises(UserError, match="lora.init.*needs LoRA"):
        config(base, data, tmp_path / "run", lora__init=str(w))


def test_proximal_term_adds_mu_times_the_drift_from_the_start(tmp_path):
    """Full-batch SGD, constant lr η, no clipping. With μ, step 1 is plain (θ₁ = θ₀ at the start,
    so the term is 0) and step 2 is θ₂ = θ₁ − η·(g(θ₁) + μ·(θ₁ − θ₀)). A plain run started from θ₁
    (``lora.init`` = checkpoint-1) gives θ₁ − η·g(θ₁), so θ₂ = that − η·μ·(θ₁ − θ₀)."""
    base = tiny_model_dir(tmp_path)
    data = write(tmp_path / "pairs.jsonl", pairs(16, seed=3))
    w0 = _adapter(base, tmp_path / "w0")
    lr, mu = 0.5, 0.7
    prox = tmp_path / "prox"
    train(_cfg(base, data, prox, lora__init=str(w0), train__proximal_mu=mu, train__lr=lr, train__max_steps=2,
               train__save_steps=1, train__ref="adapter"))
    plain = tmp_path / "plain"
    train(_cfg(base, data, plain, lora__init=str(prox / "checkpoint-1"), train__lr=lr, train__max_steps=1,
               train__ref="adapter"))
    theta0, theta1 = (load_file(str(f / "adapter_model.safetensors")) for f in (w0, prox / "checkpoint-1"))
    theta2 = load_file(str(prox / "final" / "adapter_model.safetensors"))
    plain2 = load_file(str(plain / "final" / "adapter_model.safetensors"))
    drift = max((theta1[k] - theta0[k]).abs().max().item() for k in theta0)
    assert drift > 1e-3  # step 1 moved, so the term is not 0 at step 2
    for key in theta0:
        expected = plain2[key] - lr * mu * (theta1[key] - theta0[key])
        torch.testing.assert_close(theta2[key], expected, rtol=1e-4, atol=1e-6)
