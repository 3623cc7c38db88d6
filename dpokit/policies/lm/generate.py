"""Batched sampling with a KV cache, returning the answers' token ids and, when asked, their
log-probs under the sampling model (read from the logits generation computes anyway, so the
policy's own samples need no second scoring pass for a sampled KL)."""

from __future__ import annotations

import torch


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
           top_p: float, batch_size: int, seed: int, with_logps: bool = False):
    """One answer per prompt; each answer ends at (and includes) EOS unless cut by the budget.
    ``with_logps``: (answers, log π(answer|prompt) of each), π being the model's raw distribution
    (before temperature or top-p), in fp32, as a scoring pass computes it."""
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    answers: list[list[int]] = []
    logps: list[float] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        width = max(map(len, chunk))
        # Left padding keeps every prompt's last token at the same position for generation.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_p=top_p, top_k=0, eos_token_id=eos, pad_token_id=pad, use_cache=True,
                             return_dict_in_generate=True, output_logits=with_logps)
        rows = [row[: row.index(eos) + 1] if eos in row else row for row in out.sequences[:, width:].tolist()]
        answers += rows
        if with_logps:
            logps += _answer_logps(out.logits, rows)
    return (answers, logps) if with_logps else answers


def _answer_logps(logits: tuple[torch.Tensor, ...], rows: list[list[int]]) -> list[float]:
    """Σ_t log softmax(logits_t)[y_t] over each row's own tokens (its EOS included, padding after not)."""
    total = torch.zeros(len(rows), dtype=torch.float64)
    for t, step in enumerate(logits):
        live = [i for i, row in enumerate(rows) if t < len(row)]
        if not live:
            break
        chosen = torch.tensor([rows[i][t] for i in live])
        step_logps = torch.log_softmax(step[live].float(), dim=-1).gather(1, chosen[:, None].to(step.device))
        total[live] += step_logps[:, 0].double().cpu()
    return total.tolist()
