"""Sampling a round's candidates: K answers per prompt from the current policy (HF generate, KV cache)."""

from __future__ import annotations

from accelerate import Accelerator

from dpokit.data import encode_prompt
from dpokit.eval.generate import sample
from dpokit.models import disable_dropout, load_model, load_tokenizer
from dpokit.train.loop import bf16_autocast


def sample_answers(cfg, policy: str, prompts: list, seed: int) -> list[tuple[list[str], list[int]]]:
    """For each (prompt, where): the K decoded answers and their lengths in tokens (EOS included)."""
    o = cfg.online
    k = o.samples_per_prompt
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    model = load_model(policy, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    disable_dropout(model)
    device = Accelerator().device
    model.to(device).eval()
    ids = [encode_prompt(tokenizer, p, where)[-cfg.data.max_prompt_length:] for p, where in prompts]
    with bf16_autocast(device, cfg.train.bf16)():
        answers = sample(model, tokenizer, [x for x in ids for _ in range(k)], o.max_new_tokens, o.temperature,
                         o.top_p, o.generation_batch_size, seed)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    del model
    return [(texts[i * k:(i + 1) * k], [len(a) for a in answers[i * k:(i + 1) * k]]) for i in range(len(prompts))]
