"""The fast log-prob paths (shared prompt, packing, chunked LM head) against the plain padded
path: per-token log-probs, a DPO loss and its gradients agree within 1e-5 in fp32.

Each test also checks that the two computations really differ (rows, shapes, head calls), so
an option silently falling back to the plain path would fail it.
"""

from __future__ import annotations

import pytest
import torch

from dpokit.config import LossConfig
from dpokit.data import Pair, TokenizedRecord, collate, tokenize_records
from dpokit.policies.lm.layout import padded_plan, shared_plan
from dpokit.policies.lm.logprobs import Options, completion_logps, plan
from dpokit.losses import LossContext, get_loss
from dpokit.policies.lm.tiny import tiny_model
from helpers.data import assistant, user

PLAIN = Options(chunk=0, share_prompt=False, pack=False)


RECORDS = [
    Pair([user("Write one line about a film you liked and why it worked, with some detail please.")],
         [assistant("Great pacing.")], [assistant("It was a film.")], "r0"),
    Pair("Review:", " A warm, funny and clever story with a fine cast.", " Bad.", "r1"),
    Pair([user("Rate it.")], [assistant("Eight of ten, mostly for the music.")], [assistant("Two.")], "r2"),
    Pair("Hi", " ok", " no", "r3"),
]


def batch_for(tok, records=RECORDS):
    out, report = tokenize_records(records, tok, max_length=128, max_prompt_length=64)
    assert report.records_out == len(records)
    return collate(out, tok.pad_token_id)


def dpo_loss(model, batch, options, group=2):
    """Sum of sigmoid-DPO losses against a fixed reference (every token's log-prob + 0.1)."""
    pol = completion_logps(model, batch, group, options=options)
    ref = type(pol)((pol.tokens.detach() + 0.1).masked_fill(~pol.mask, 0.0), pol.mask)
    return pol, get_loss("sigmoid").fn(pol, ref, LossConfig(beta=0.1, label_smoothing=0.0), LossContext()).losses.sum()


def run(model, batch, options, group=2):
    model.zero_grad(set_to_none=True)
    pol, loss = dpo_loss(model, batch, options, group)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return pol, loss.detach(), grads


def assert_same(a, b):
    (pa, la, ga), (pb, lb, gb) = a, b
    assert pa.tokens.shape == pb.tokens.shape and torch.equal(pa.mask, pb.mask)
    torch.testing.assert_close(pa.tokens, pb.tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=0)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-5, rtol=0, msg=name)
    assert any(g.abs().sum() > 0 for g in ga.values())


@pytest.fixture
def model(tiny_tokenizer):
    return tiny_model(len(tiny_tokenizer), seed=3).float().train()


def head_calls(model, batch, options):
    """Rows given to the LM head in each call during one forward and backward."""
    sizes = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    try:
        _, loss = dpo_loss(model, batch, options)
        loss.backward()
    finally:
        hook.remove()
    return sizes


def test_chunked_head_equals_whole(tiny_tokenizer, model):
    batch = batch_for(tiny_tokenizer)
    tokens = int(batch["completion_mask"].sum())
    chunked = Options(chunk=5, share_prompt=False, pack=False)
    assert_same(run(model, batch, chunked), run(model, batch, PLAIN))
    calls = head_calls(model, batch, chunked)
    # the body's one kept position, then ⌈K/5⌉ chunks in forward and again in backward (recomputed)
    n = -(-tokens // 5)
    assert max(calls[1:]) == 5 and len(calls) == 1 + 2 * n
    assert head_calls(model, batch, PLAIN)[1:] == [tokens]


def test_shared_prompt_equals_padded(tiny_tokenizer, model):
    batch = batch_for(tiny_tokenizer)
    shared = Options(chunk=0, share_prompt=True, pack=False)
    p = plan(model, batch, 2, shared)
    assert p.inputs["input_ids"].shape[0] == 4 and p.inputs["attention_mask"].dim() == 4  # one row per pair
    assert plan(model, batch, 2, PLAIN).inputs["input_ids"].shape[0] == 8
    assert_same(run(model, batch, shared), run(model, batch, PLAIN))


def test_packing_equals_padded(tiny_tokenizer, model):
    batch = batch_for(tiny_tokenizer)
    for share in (True, False):
        packed = Options(chunk=3, share_prompt=share, pack=True)
        rows = plan(model, batch, 2, packed).inputs["input_ids"].shape[0]
        assert rows < (4 if share else 8)  # short records really share a row
        assert_same(run(model, batch, packed), run(model, batch, PLAIN))


def test_eager_attention_takes_the_block_mask(tiny_tokenizer):
    model = tiny_model(len(tiny_tokenizer), seed=4).float()
    model.config._attn_implementation = "eager"
    batch = batch_for(tiny_tokenizer)
    assert plan(model, batch, 2, Options()).inputs["attention_mask"].dim() == 4
    assert_same(run(model, batch, Options(chunk=4)), run(model, batch, PLAIN))


def test_unsupported_attention_falls_back_to_padded(tiny_tokenizer, model):
    model.config._attn_implementation = "flash_attention_2"
    p = plan(model, batch_for(tiny_tokenizer), 2, Options())
    assert p.inputs["attention_mask"].dim() == 2


def test_lists_of_three_share_one_prompt(tiny_tokenizer, model):
    """G = 3 responses per prompt: one row per record holds the prompt and all three."""
    recs = [TokenizedRecord([5, 6, 7, 8], [[9, 10], [11, 12, 13], [14]], "a"),
            TokenizedRecord([15, 16], [[17, 18, 19, 20], [21], [22, 23]], "b")]
    batch = collate(recs, tiny_tokenizer.pad_token_id)
    p = shared_plan(batch, 3, pack=False)
    assert p.inputs["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert p.inputs["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 4]
    see = p.inputs["attention_mask"][0, 0]
    assert see[6].tolist() == [True] * 4 + [False, False, True] + [False] * 3  # 2nd answer: prompt + itself
    assert_same(run(model, batch, Options(chunk=2), group=3), run(model, batch, PLAIN, group=3))
    assert padded_plan(batch).inputs["input_ids"].shape == (6, 7)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's, on transformers 5
def test_lora_shared_and_chunked_equal_padded(tiny_tokenizer, model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    batch = batch_for(tiny_tokenizer)
    fast, plain = run(lora, batch, Options(chunk=4)), run(lora, batch, PLAIN)
    assert all("lora_" in n for n in fast[2])
    assert_same(fast, plain)


def saved_for_backward(model, batch) -> int:
    """How many tensors one forward keeps for its backward."""
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dpo_loss(model, batch, Options())
    return count[0]


def test_gradient_checkpointing_equals_plain(tiny_tokenizer, model):
    """Checkpointing recomputes the layers' activations in backward: the forward keeps far fewer
    tensors, and loss and gradients are unchanged."""
    batch = batch_for(tiny_tokenizer)
    plain, kept = run(model, batch, Options()), saved_for_backward(model, batch)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.config.use_cache = False
    assert saved_for_backward(model, batch) < kept / 2
    assert_same(run(model, batch, Options()), plain)


def test_bf16_autocast_tracks_fp32(tiny_tokenizer, model):
    """bf16 autocast changes the matmuls' precision, not the computation: per-token log-probs
    stay within bf16 rounding of fp32 (≈ 3 significant digits), the returned log-probs are fp32,
    and the loss's gradients point the same way."""
    batch = batch_for(tiny_tokenizer)
    fp32 = run(model, batch, Options())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = run(model, batch, Options())
    assert bf16[0].tokens.dtype == torch.float32
    assert not torch.equal(bf16[0].tokens, fp32[0].tokens)  # autocast really ran in bf16
    torch.testing.assert_close(bf16[0].tokens, fp32[0].tokens, atol=0.05, rtol=0.02)
    flat = [torch.cat([g[n].flatten() for n in sorted(g)]) for g in (fp32[2], bf16[2])]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99


def _scaled_head_models():
    from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                              GraniteForCausalLM)

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {"gemma2-softcap": (Gemma2ForCausalLM, Gemma2Config(**small, head_dim=16, final_logit_softcapping=0.5)),
            "granite-divide": (GraniteForCausalLM, GraniteConfig(**small, logits_scaling=4.0)),
            "cohere-scale": (CohereForCausalLM, CohereConfig(**small, logit_scale=0.25))}


@pytest.mark.parametrize("name", ["gemma2-softcap", "granite-divide", "cohere-scale"])
def test_models_that_transform_their_logits(name):
    """Soft-capped or scaled logits (applied by the model after its LM head) give the log-probs
    of the model's own forward, on every path."""
    cls, cfg = _scaled_head_models()[name]
    torch.manual_seed(0)
    model = cls(cfg).float().eval()
    recs = [TokenizedRecord([5, 6, 7, 8], [[9, 10], [11, 12, 13]], "a"),
            TokenizedRecord([15, 16], [[17, 18, 19, 20], [21]], "b")]
    batch = collate(recs, 0)
    ids, cmask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float()
        for options in (PLAIN, Options(chunk=3)):
            lp = completion_logps(model, batch, 2, options=options)
            first = ids.shape[1] - lp.tokens.shape[-1]
            own = logits[:, first - 1:-1].log_softmax(-1).gather(-1, ids[:, first:, None]).squeeze(-1)
            own = own.masked_fill(~cmask[:, first:], 0.0)
            torch.testing.assert_close(lp.tokens.reshape(own.shape), own, atol=1e-5, rtol=0)


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct tensors one forward keeps for its backward."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dpo_loss(model, batch, Options())
    return sum(storages.values())


def test_grouped_heads_and_one_additive_mask_keep_less_and_change_nothing(tiny_tokenizer, model, monkeypatch):
    """The tiny model has 4 query heads over 2 key/value heads. On CPU the block-masked forward
    attends with the grouped heads as they are and passes one additive mask for all layers;
    transformers' own path (forced with TRANSFORMERS_SDPA_FORCE_GQA=0) copies the key/value heads
    and SDPA keeps a converted mask per layer. Same loss and gradients, less kept for backward."""
    batch = batch_for(tiny_tokenizer)
    ours, kept = run(model, batch, Options()), saved_bytes(model, batch)
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
    assert saved_bytes(model, batch) > kept
    assert_same(ours, run(model, batch, Options()))
