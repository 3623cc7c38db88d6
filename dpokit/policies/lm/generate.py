"""Batched sampling with a KV cache, returning token ids of prompt and answer."""

from __future__ import annotations

import torch


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
           top_p: float, batch_size: int, seed: int) -> list[list[int]]:
    """One answer per prompt; each answer ends at (and includes) EOS unless cut by the budget."""
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    answers: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        width = max(map(len, chunk))
        # Left padding keeps every prompt's last token at the same position for generation.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_p=top_p, top_k=0, eos_token_id=eos, pad_token_id=pad, use_cache=True)
        for row in out[:, width:].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)
    return answers
