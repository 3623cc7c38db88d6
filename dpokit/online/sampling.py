"""Sampling a round's candidates: K answers per prompt from the current policy.

Two backends: HF ``generate`` (batched, KV cache; everywhere) and vLLM (on a CUDA machine where
it is installed). Both read the policy through ``dpokit.policies.lm.load.resolve_model_path``; vLLM is given
a plain HF folder (``plain_folder``: the model itself, or a merged or converted copy for an
adapter, a GGUF file or a checkpoint without a tokenizer).

``--backend auto`` takes vLLM only where it has been seen to agree with HF on this machine: a
self-check (greedy answers to two of the round's prompts, vLLM vs HF, the same token ids) that
ran for this model, vLLM version, device and precision, and passed. Its result is kept in
``cache_root()/backend-checks.json``, so it runs once per model. One line says which backend
samples and why. vLLM has not been run by the tests (no GPU, no vLLM here): see docs/online.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from dpokit.errors import UserError

Generator = Callable[[list[list[int]]], list[list[int]]]
"""Greedy answers (token ids) to prompts (token ids): what the self-check compares."""
CHECK_PROMPTS, CHECK_TOKENS = 2, 16


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class BackendChoice:
    name: str
    """``hf`` or ``vllm``."""
    reason: str

    def line(self) -> str:
        return f"[backend] sampling with {self.name}: {self.reason}"


def check_backend(requested: str, installed: bool | None = None, cuda: bool | None = None) -> str | None:
    """Why vLLM cannot run here, or None; an explicit ``--backend vllm`` that cannot is an error."""
    installed = vllm_installed() if installed is None else installed
    cuda = cuda_available() if cuda is None else cuda
    why = ("vllm is not installed (pip install vllm)" if not installed else
           "vllm needs a CUDA GPU and none is available" if not cuda else None)
    if requested == "vllm" and why:
        raise UserError(why, where="config", field="online.backend")
    return why


def choose_backend(requested: str, self_check: Callable[[], dict], installed: bool | None = None,
                   cuda: bool | None = None) -> BackendChoice:
    """The backend for ``requested`` (auto, hf, vllm). ``self_check`` returns the (cached) result of
    comparing vLLM with HF for the model at hand; ``auto`` calls it only where vLLM could run."""
    if requested == "hf":
        return BackendChoice("hf", "asked for (--backend hf)")
    why = check_backend(requested, installed, cuda)
    if why:
        return BackendChoice("hf", f"auto: {why}")
    if requested == "vllm":
        return BackendChoice("vllm", "asked for (--backend vllm; no self-check)")
    result = self_check()
    verdict = "passed" if result["passed"] else "failed"
    return BackendChoice("vllm" if result["passed"] else "hf",
                         f"auto: the vLLM self-check {verdict} for this model ({result['detail']}; "
                         f"{'cached from ' + result['time'] if result.get('cached') else 'run now'})")


# -- the self-check and its cache ---------------------------------------------------------------

def compare_generators(prompt_ids: list[list[int]], reference: Generator, candidate: Generator) -> dict:
    """Whether ``candidate`` gives the same greedy token ids as ``reference`` on every prompt."""
    want, got = reference(prompt_ids), candidate(prompt_ids)
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return {"passed": False, "detail": f"prompt {i + 1} differs from token {at}"}
    if len(want) != len(got):
        return {"passed": False, "detail": f"{len(got)} answers for {len(want)} prompts"}
    return {"passed": True, "detail": f"the same greedy tokens on {len(want)} prompts"}


def cached_check(key: dict, run: Callable[[], dict], path: Path | None = None) -> dict:
    """The stored result for ``key``, else ``run()``'s, stored (atomically) before it is returned."""
    from dpokit.store.atomic import write_text_atomic
    from dpokit.store.cache import cache_root

    path = path or cache_root() / "backend-checks.json"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    try:
        checks = json.loads(path.read_text())
    except (OSError, ValueError):
        checks = {}
    if isinstance(checks.get(digest), dict):
        return {**checks[digest], "cached": True}
    result = {**run(), "key": key, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    checks[digest] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(checks, indent=1))
    return {**result, "cached": False}


def check_key(cfg, policy: str, device: str) -> dict:
    """What a self-check's result holds for: the model's identity, vLLM's version, device, precision."""
    from importlib.metadata import version

    from dpokit.eval.model_judges import model_identity
    from dpokit.precision import resolve

    return {"model": model_identity(policy), "vllm": version("vllm"), "device": device,
            "dtype": resolve(cfg.train.dtype, "cuda").name}


# -- sampling ---------------------------------------------------------------------------------------

def sample_answers(cfg, policy: str, prompts: list, seed: int, log=print) -> list[tuple[list[str], list[int]]]:
    """For each (prompt, where): the K decoded answers and their lengths in tokens (EOS included)."""
    from dpokit.data import encode_prompt
    from dpokit.policies.lm.load import load_tokenizer

    k = cfg.online.samples_per_prompt
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    ids = [encode_prompt(tokenizer, p, where)[-cfg.data.max_prompt_length:] for p, where in prompts]
    choice = choose_backend(cfg.online.backend, lambda: _self_check(cfg, policy, ids[:CHECK_PROMPTS]))
    log(choice.line())
    answers = (vllm_answers if choice.name == "vllm" else hf_answers)(cfg, policy, ids, seed)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    return [(texts[i * k:(i + 1) * k], [len(a) for a in answers[i * k:(i + 1) * k]]) for i in range(len(prompts))]


def _self_check(cfg, policy: str, prompt_ids: list[list[int]]) -> dict:
    import torch

    key = check_key(cfg, policy, torch.cuda.get_device_name())
    return cached_check(key, lambda: compare_generators(prompt_ids, lambda p: _hf_generate(cfg, policy, p, 0),
                                                        lambda p: _vllm_generate(cfg, policy, p, 0)))


def hf_answers(cfg, policy: str, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
    """K answers per prompt, prompt-major, with HF generate."""
    k = cfg.online.samples_per_prompt
    return _hf_generate(cfg, policy, [x for x in prompt_ids for _ in range(k)], seed, cfg.online.temperature)


def _hf_generate(cfg, policy: str, prompt_ids: list[list[int]], seed: int, temperature: float = 0.0,
                 max_new_tokens: int = CHECK_TOKENS) -> list[list[int]]:
    """One answer per prompt with HF generate; temperature 0 is greedy (the self-check)."""
    import torch
    from accelerate import Accelerator

    from dpokit.policies.lm.generate import sample
    from dpokit.policies.lm.load import disable_dropout, load_model, load_tokenizer
    from dpokit.precision import resolve

    o = cfg.online
    tokenizer = load_tokenizer(policy, cfg.model.trust_remote_code)
    model = load_model(policy, cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    disable_dropout(model)
    device = Accelerator().device
    model.to(device).eval()
    greedy = temperature == 0
    # the self-check runs prompts one by one: left padding in a batch may change the last digits,
    # and with them a greedy token, which would fail the check for a reason that is HF's own
    budget, batch = (max_new_tokens, 1) if greedy else (o.max_new_tokens, o.generation_batch_size)
    with resolve(cfg.train.dtype, device.type).autocast(device)():
        answers = sample(model, tokenizer, prompt_ids, budget, temperature, 1.0 if greedy else o.top_p, batch, seed)
    del model
    if device.type == "cuda":  # vLLM, next, sizes its share from the free memory
        torch.cuda.empty_cache()
    return answers


def vllm_answers(cfg, policy: str, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
    """K answers per prompt, prompt-major, with vLLM (n = K samples per request). Unverified here."""
    o = cfg.online
    return _vllm_generate(cfg, policy, prompt_ids, seed, o.samples_per_prompt, o.temperature, o.top_p,
                          o.max_new_tokens)


def _vllm_generate(cfg, policy: str, prompt_ids: list[list[int]], seed: int, n: int = 1, temperature: float = 0.0,
                   top_p: float = 1.0, max_tokens: int = CHECK_TOKENS) -> list[list[int]]:
    import gc

    import torch
    from vllm import LLM, SamplingParams

    from dpokit.precision import resolve

    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[resolve(cfg.train.dtype, "cuda").name]
    # The trainer needs the GPU next: take part of it, and give it all back below.
    llm = LLM(model=str(plain_folder(policy, cfg.model.trust_remote_code, cfg.model.allow_pickle)), seed=seed,
              gpu_memory_utilization=0.5, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    answers = [list(c.token_ids) for out in outputs for c in out.outputs]
    del llm, outputs
    gc.collect()
    torch.cuda.empty_cache()
    return answers


def plain_folder(policy: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> Path:
    """A HF folder with weights and tokenizer for ``policy``, for readers that take nothing else
    (vLLM): the folder itself where it is one, else a merged or converted copy, written once
    (atomically) under ``cache_root()/plain/`` and keyed by the model's identity."""
    from dpokit.eval.model_judges import model_identity
    from dpokit.policies.lm.load import load_model, load_tokenizer, resolve_model_path
    from dpokit.store.atomic import atomic_folder, verify
    from dpokit.store.cache import cache_root

    source = resolve_model_path(policy)
    if source.kind == "folder" and source.tokenizer_source() is source and Path(source.folder).is_dir():
        return Path(source.folder)
    target = cache_root() / "plain" / model_identity(source.path)[:32]
    if target.is_dir() and verify(target) is None:
        return target
    model = load_model(policy, trust_remote_code, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(policy, trust_remote_code)
    with atomic_folder(target, "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
