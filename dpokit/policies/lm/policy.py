"""``causal_lm``: a Hugging Face causal LM as a policy (the first kind behind ``policies.base.Policy``).

Records are tokenized through the data pipeline (with its cache), batches are ``data.collate``'s
padded rows, and log-probs come from the one log-prob path (``logprobs.py``: shared prompts,
packing, the chunked LM head). Loading covers local folders, GGUF files, adapters (merged) and
the embedded model (``load.py``); LoRA is applied here when the config asks for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from dpokit.data import TokenizedRecord, collate
from dpokit.data.cache import load_tokenized, tokenizer_hash
from dpokit.data.kinds import response_names
from dpokit.errors import UserError
from dpokit.logps import Logps
from dpokit.policies.lm.generate import sample
from dpokit.policies.lm.load import (apply_lora, disable_dropout, is_peft, load_adapter_weights, load_model,
                                     load_tokenizer)
from dpokit.policies.lm.logprobs import FAST, Options, completion_log_probs, completion_logps, logps_from_log_probs
from dpokit.store.atomic import atomic_folder


class CausalLM:
    """``cfg`` (a RunConfig) is needed to read data, load, add adapters and save; batching and
    scoring need only the tokenizer (evaluation builds one so)."""

    name = "causal_lm"

    def __init__(self, tokenizer, options: Options = FAST, cfg=None) -> None:
        self.tokenizer, self.pad_id, self.options, self.cfg = tokenizer, tokenizer.pad_token_id, options, cfg

    @classmethod
    def from_config(cls, cfg) -> CausalLM:
        t = cfg.train  # the policy and its reference lay out and chunk a batch alike
        return cls(load_tokenizer(cfg.model.path, cfg.model.trust_remote_code),
                   Options(chunk=t.logprob_chunk, share_prompt=t.share_prompt, pack=t.pack,
                           alignment=cfg.loss.wpo_alignment if cfg.loss.wpo else "none"), cfg)

    def checks(self, spec) -> list[tuple[bool, str, str]]:
        return []

    def records(self, path: str, input_kind: str, name: str, log, options=None) -> list[TokenizedRecord]:
        """Read, clean and tokenize ``path`` (or take it from the data cache), print what was dropped
        or changed, and write the full report to ``OUTPUT/data_report_<name>.json``."""
        cfg = self.cfg
        out = Path(cfg.train.output)
        cache_dir = (Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "data_cache") if cfg.data.cache else None
        tokenized, lines, _ = load_tokenized(path, input_kind, self.tokenizer, options or cfg.data, cfg.data.max_length,
                                             cfg.data.max_prompt_length, out / f"data_report_{name}.json", cache_dir)
        for line in lines:
            log(f"[data:{name}] {line}")
        if not tokenized:
            raise UserError("no usable records after tokenization and truncation", where=path)
        return tokenized

    def load(self, path: str) -> torch.nn.Module:
        m = self.cfg.model
        model = load_model(path, m.trust_remote_code, allow_pickle=m.allow_pickle)
        disable_dropout(model)
        if m.gradient_checkpointing and path == m.path:
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            model.config.use_cache = False
        return model

    def trainable(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.cfg.lora.enabled:
            return module
        # A policy loaded from an adapter folder arrives merged (``load_model``), so this fresh adapter
        # starts at exactly the starting policy, and "adapter disabled" (the adapter reference) is that
        # policy, not the bare base the loaded adapter was trained on.
        torch.manual_seed(self.cfg.train.seed)
        model = apply_lora(module, self.cfg.lora, base=self.cfg.model.path)
        if self.cfg.lora.init:  # the adapter starts at given weights; the base (the reference) is untouched
            load_adapter_weights(model, self.cfg.lora.init)
        return model

    def adapters_off(self, module: torch.nn.Module):
        return module.disable_adapter()

    def batch(self, records: list[TokenizedRecord], indices: list[int], device) -> dict:
        return {k: v.to(device) for k, v in collate([records[i] for i in indices], self.pad_id).items()}

    def logps(self, module, batch: dict, group: int, reference: Logps | None = None, full: bool = False) -> Logps:
        if full:
            dist = completion_log_probs(module, batch, group, self.options)
            return replace(logps_from_log_probs(dist, batch, group), dist=dist)
        ref_dist = reference.dist if reference is not None else None
        return completion_logps(module, batch, group, ref_dist, self.options)

    def sample(self, module, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
               batch_size: int, seed: int, with_logps: bool = False):
        """One answer (token ids) per prompt, batched with a KV cache; it ends at EOS unless cut.
        ``with_logps``: also each answer's log π under the sampling model (``generate.sample``)."""
        return sample(module, self.tokenizer, prompt_ids, max_new_tokens, temperature, top_p, batch_size, seed,
                      with_logps)

    def real_tokens(self, batch: dict, group: int, input_kind: str) -> int:
        return real_tokens(input_kind, batch, group)

    def fingerprint(self, records: list[TokenizedRecord]) -> str:
        return hashlib.sha256(f"{tokenizer_hash(self.tokenizer)}|{records_hash(records)}".encode()).hexdigest()

    def save(self, module, folder: Path, weights: dict | None = None) -> None:
        save_model(module, folder, self.cfg.lora.merge, self.tokenizer, weights)


def real_tokens(kind: str, batch: dict, groups: int) -> int:
    """The batch's tokens of data, each counted once: every record's prompt once, however many
    responses share it, plus its real responses (not KTO's partner rows), no padding. This is
    what ``tokens_per_s`` counts, and what the benchmark against TRL counts."""
    completion = batch["completion_mask"].sum(1)
    n = completion.shape[0] // groups
    prompt = batch["attention_mask"][:n].sum(1) - completion[:n]
    return int(prompt.sum() + completion[:n * len(response_names(kind, groups))].sum())


def save_model(model, folder: Path, merge_lora: bool = False, tokenizer=None, weights: dict | None = None) -> None:
    """The model (and tokenizer) as a ``from_pretrained`` folder, written atomically with a manifest;
    ``weights``: the full state dict a sharding engine gathered (the model's own are shards)."""
    with atomic_folder(folder, "model") as tmp:
        if is_peft(model) and merge_lora:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def records_hash(records: list[TokenizedRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt_ids, r.completion_ids]).encode())
    return h.hexdigest()
