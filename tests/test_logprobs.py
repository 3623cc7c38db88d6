"""Tests for dpokit.policies.lm.logprobs.completion_logps on a real tiny random Llama and the tiny tokenizer."""

from __future__ import annotations

import pytest
import torch

from dpokit.data import Pair, collate, tokenize_records
from dpokit.policies.lm.logprobs import _accepts_logits_to_keep, completion_logps
from helpers.data import assistant, user


RECORDS = [
    # chat record: long prompt, short completions
    Pair([user("Write one line about a film you liked and why it worked.")],
         [assistant("Great pacing.")], [assistant("It was a film.")], "r0"),
    # plain-text record: short prompt, longer completions of different lengths
    Pair("Review:", " A warm, funny and clever story with a fine cast.", " Bad.", "r1"),
    # chat record of middling length
    Pair([user("Rate it.")], [assistant("Eight of ten, mostly for the music.")], [assistant("Two.")], "r2"),
]


def batch_for(tok, records):
    out, report = tokenize_records(records, tok, max_length=128, max_prompt_length=64)
    assert report.records_out == len(records)
    return out, collate(out, tok.pad_token_id)


def naive_token_logps(model, batch) -> list[list[float]]:
    """Full forward (no logits_to_keep), log_softmax over every position; for each row the
    log-prob of every completion token t read at position t − 1, in order."""
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logits = model(input_ids=ids, attention_mask=attn).logits
    assert logits.shape[1] == ids.shape[1]  # really the full sequence
    lp = torch.log_softmax(logits.float(), dim=-1)
    rows = []
    for i in range(ids.shape[0]):
        rows.append([lp[i, t - 1, ids[i, t]] for t in range(ids.shape[1]) if cmask[i, t]])
    return rows


def per_row(logps) -> list[torch.Tensor]:
    """Implementation output (G, B, T') → per row (g·B + b) the masked token log-probs in order."""
    G, B, _ = logps.tokens.shape
    return [logps.tokens[g, b][logps.mask[g, b]] for g in range(G) for b in range(B)]


def test_uses_logits_to_keep_path(tiny_model):
    """Llama accepts logits_to_keep, so the tests below compare the sliced path with a full forward."""
    assert _accepts_logits_to_keep(tiny_model)


def test_matches_naive_full_forward(tiny_tokenizer, tiny_model):
    """Three pairs with different prompt lengths and completion lengths (6 rows, G = 2, B = 3).
    Per-token values and means (= sum / count) must equal the naive computation to 1e-5, sums
    (Σ over completion tokens) to 1e-5 + 1e-6 relative, counts = completion lengths exactly."""
    recs, batch = batch_for(tiny_tokenizer, RECORDS)
    prompt_lens = [len(r.prompt_ids) for r in recs]
    comp_lens = [len(r.completion_ids[g]) for g in range(2) for r in recs]
    assert len(set(prompt_lens)) == 3 and len(set(comp_lens)) >= 4

    with torch.no_grad():
        lp = completion_logps(tiny_model, batch, group_size=2)
        naive = naive_token_logps(tiny_model, batch)

    assert lp.tokens.shape[:2] == (2, 3) and lp.mask.shape == lp.tokens.shape
    assert lp.tokens.dtype == torch.float32 and lp.mask.dtype == torch.bool
    assert lp.count.flatten().tolist() == comp_lens
    assert (lp.tokens[~lp.mask] == 0).all()
    for got, want in zip(per_row(lp), naive):
        torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    # sums are ~ −100 in fp32 (one ulp ≈ 8e-6), so they also get a 1e-6 relative tolerance
    naive_sums = torch.tensor([sum(float(x) for x in w) for w in naive], dtype=torch.float64).view(2, 3)
    torch.testing.assert_close(lp.sum.double(), naive_sums, atol=1e-5, rtol=1e-6)
    naive_means = naive_sums / torch.tensor(comp_lens, dtype=torch.float64).view(2, 3)
    torch.testing.assert_close(lp.mean.double(), naive_means, atol=1e-5, rtol=0)
    assert (lp.sum < 0).all()


def test_padding_invariance(tiny_tokenizer, tiny_model):
    """Record r2 scored alone (B = 1) and next to a longer record r0 (longer prompt, and in the
    batch its rows are right-padded) gives the same token log-probs to 1e-5."""
    with torch.no_grad():
        (short,), alone = batch_for(tiny_tokenizer, [RECORDS[2]])
        lp_alone = completion_logps(tiny_model, alone, group_size=2)
        recs, together = batch_for(tiny_tokenizer, [RECORDS[2], RECORDS[1], RECORDS[0]])
        lp_together = completion_logps(tiny_model, together, group_size=2)
    assert together["input_ids"].shape[1] > alone["input_ids"].shape[1]
    assert (together["attention_mask"][[0, 3]] == 0).any()  # r2's rows really are padded
    for g in range(2):
        a = lp_alone.tokens[g, 0][lp_alone.mask[g, 0]]
        t = lp_together.tokens[g, 0][lp_together.mask[g, 0]]
        assert a.shape == t.shape == (len(short.completion_ids[g]),)
        torch.testing.assert_close(a, t, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_alone.sum[:, 0], lp_together.sum[:, 0], atol=1e-5, rtol=1e-6)


def test_gradients_reach_parameters_and_match_naive(tiny_tokenizer, tiny_model):
    """d(Σ log π)/dθ is non-zero on the embeddings and on every layer, and equals the gradient
    of the naive full-forward sum (relative 1e-4)."""
    _, batch = batch_for(tiny_tokenizer, RECORDS[:2])
    model = tiny_model
    lp = completion_logps(model, batch, group_size=2)
    assert lp.tokens.requires_grad
    lp.sum.sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["model.embed_tokens.weight"].abs().sum() > 0
    for i in range(model.config.num_hidden_layers):
        for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            g = grads[f"model.layers.{i}.{part}.weight"]
            assert torch.isfinite(g).all() and g.abs().sum() > 0, (i, part)

    model.zero_grad(set_to_none=True)
    naive = naive_token_logps(model, batch)
    torch.stack([x for row in naive for x in row]).sum().backward()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"):
        want = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(grads[name], want, atol=1e-6, rtol=1e-4)


def test_token_kl_matches_full_softmax(tiny_tokenizer):
    """KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) per completion token, from two different models, equals
    Σ_v p_ref·(log p_ref − log p) computed from full forwards; 0 for a model against itself;
    and the reference's token log-probs read from its distributions equal its own logps."""
    from dpokit.policies.lm.logprobs import completion_log_probs, logps_from_log_probs
    from dpokit.policies.lm.tiny import tiny_model

    policy = tiny_model(len(tiny_tokenizer), seed=1).float().eval()
    ref = tiny_model(len(tiny_tokenizer), seed=2).float().eval()
    _, batch = batch_for(tiny_tokenizer, RECORDS)
    with torch.no_grad():
        ref_lp = completion_log_probs(ref, batch)
        out = completion_logps(policy, batch, 2, ref_lp)
        full_p = torch.log_softmax(policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        full_r = torch.log_softmax(ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        self_kl = completion_logps(ref, batch, 2, ref_lp).kl
    cmask = batch["completion_mask"]
    n = cmask.shape[0] // 2
    for row in range(cmask.shape[0]):
        positions = cmask[row].nonzero().flatten().tolist()
        expected = [(full_r[row, t - 1].exp() * (full_r[row, t - 1] - full_p[row, t - 1])).sum().item()
                    for t in positions]
        g, b = divmod(row, n)
        got = out.kl[g, b][out.mask[g, b]].tolist()
        assert got == pytest.approx(expected, abs=1e-5)
        assert min(expected) > 0
    assert self_kl.abs().max().item() < 1e-5
    same = logps_from_log_probs(ref_lp, batch, 2)
    with torch.no_grad():
        direct = completion_logps(ref, batch, 2)
    torch.testing.assert_close(same.tokens, direct.tokens, atol=1e-5, rtol=0)


def test_sampling_gives_each_answers_log_prob_as_a_scoring_pass_does(tiny_model, tiny_tokenizer):
    """The sampled KL's log π(y|x) of a model's own samples comes from the logits generation
    computed (left-padded, KV cache): equal to scoring the answers afresh, answers that stop at
    EOS early included."""
    import collections
    import contextlib
    import types

    from dpokit.eval.evaluate import sequence_logps
    from dpokit.policies.lm.generate import sample

    prompts = [tiny_tokenizer.encode("review " * (1 + i % 5) + str(i)) for i in range(12)]
    free = sample(tiny_model, tiny_tokenizer, prompts, 24, 1.0, 1.0, 5, 0)
    common = collections.Counter(t for a in free for t in a).most_common(1)[0][0]
    stops = types.SimpleNamespace(eos_token_id=common, pad_token_id=tiny_tokenizer.pad_token_id)  # an EOS seen often
    answers, logps = sample(tiny_model, stops, prompts, 24, 1.0, 1.0, 5, 0, with_logps=True)
    assert answers == sample(tiny_model, stops, prompts, 24, 1.0, 1.0, 5, 0)  # asking for log-probs changes nothing
    assert len({len(a) for a in answers}) > 1 and any(a[-1] == common and len(a) < 24 for a in answers)
    scored = sequence_logps(tiny_model, prompts, answers, tiny_tokenizer.pad_token_id, 5, contextlib.nullcontext)
    assert logps == pytest.approx(scored, abs=1e-4)
