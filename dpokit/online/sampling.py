"""Sampling a round's candidates: K answers per prompt from the current policy.

Two backends: HF ``generate`` (batched, KV cache; everywhere) and vLLM (on a CUDA machine where
it is installed). ``auto`` takes vLLM when both hold, else HF. The vLLM path loads the round's
policy folder as saved (the initial model, then ``round-N/final``) and frees the GPU before
training; it has not been run by the tests (no GPU, no vLLM here): see docs/online.md.
"""

from __future__ import annotations

import importlib.util

from dpokit.errors import UserError


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str, lora: bool = False, installed: bool | None = None,
                   cuda: bool | None = None) -> str:
    """``hf`` or ``vllm`` for the ``--backend`` asked for; an explicit ``vllm`` that cannot run is an
    error, not a silent fallback. ``lora``: rounds save adapters (not merged), which vLLM cannot load
    as a model folder."""
    installed = vllm_installed() if installed is None else installed
    cuda = cuda_available() if cuda is None else cuda
    if requested == "hf":
        return "hf"
    usable = installed and cuda and not lora
    if requested == "vllm" and not usable:
        why = ("vllm is not installed (pip install vllm)" if not installed else
               "vllm needs a CUDA GPU and none is available" if not cuda else
               "vllm loads full model folders: add --merge-lora so each round saves merged weights")
        raise UserError(why, where="config", field="online.backend")
    return "vllm" if usable else "hf"


def sample_answers(cfg, policy: str, prompts: list, seed: int) -> list[tuple[list[str], list[int]]]:
    """For each (prompt, where): the K decoded answers and their lengths in tokens (EOS included)."""
    from dpokit.data import encode_prompt
    from dpokit.models import load_tokenizer

    k = cfg.online.samples_per_prompt
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    ids = [encode_prompt(tokenizer, p, where)[-cfg.data.max_prompt_length:] for p, where in prompts]
    backend = choose_backend(cfg.online.backend, lora=cfg.lora.enabled and not cfg.lora.merge)
    answers = (vllm_answers if backend == "vllm" else hf_answers)(cfg, policy, ids, seed)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    return [(texts[i * k:(i + 1) * k], [len(a) for a in answers[i * k:(i + 1) * k]]) for i in range(len(prompts))]


def hf_answers(cfg, policy: str, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
    """K answers per prompt, prompt-major, with HF generate."""
    from accelerate import Accelerator

    from dpokit.eval.generate import sample
    from dpokit.models import disable_dropout, load_model, load_tokenizer
    from dpokit.precision import resolve

    o = cfg.online
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    model = load_model(policy, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    disable_dropout(model)
    device = Accelerator().device
    model.to(device).eval()
    with resolve(cfg.train.dtype, device.type).autocast(device)():
        return sample(model, tokenizer, [x for x in prompt_ids for _ in range(o.samples_per_prompt)],
                      o.max_new_tokens, o.temperature, o.top_p, o.generation_batch_size, seed)


def vllm_answers(cfg, policy: str, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
    """K answers per prompt, prompt-major, with vLLM (n = K samples per request). Unverified here."""
    import gc

    import torch
    from vllm import LLM, SamplingParams

    from dpokit.precision import resolve

    o = cfg.online
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[resolve(cfg.train.dtype, "cuda").name]
    # The trainer needs the GPU next: take part of it, and give it all back below.
    llm = LLM(model=policy, seed=seed, gpu_memory_utilization=0.5, dtype=dtype,
              trust_remote_code=cfg.model.trust_remote_code)
    params = SamplingParams(n=o.samples_per_prompt, temperature=o.temperature, top_p=o.top_p,
                            max_tokens=o.max_new_tokens, seed=seed)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    answers = [list(c.token_ids) for out in outputs for c in out.outputs]
    del llm, outputs
    gc.collect()
    torch.cuda.empty_cache()
    return answers
