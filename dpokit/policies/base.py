"""The policy interface: all the training loop, the reference strategies, evaluation and online
sampling may know of the model being trained.

A preference loss needs only log π(y|x) for a few responses y per context x, so a kind of policy
is whatever can give those: a causal LM (the sum of its completion tokens' log-probs), a scorer
ranking candidate items for a context (a log-softmax over the candidates), a diffusion denoiser.
Each kind keeps its own speed work behind this interface; a new kind is a new implementation,
registered by name in ``dpokit.policies``, never a branch in the loop.

Batches are dicts of tensors with responses grouped: rows [g·B, (g+1)·B) hold response g of each
of the B records. Every kind's batch holds ``weights`` (B,) and ``completion_mask`` (G·B, T), True
where the ``Logps`` of a row hold a value (the LM: completion tokens; a scorer: one position), so
the on-disk reference cache and token-averaged losses work for every kind unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol

import torch

from dpokit.logps import Logps


class Policy(Protocol):
    """One kind of trainable model, built from a run config (``dpokit.config.RunConfig``)."""

    name: str
    """The registered name (``model.policy``)."""

    @classmethod
    def from_config(cls, cfg) -> Policy:
        """The kind as a run config sets it up (the LM: its tokenizer and log-prob options)."""

    def records(self, path: str, input_kind: str, name: str, log: Callable[[str], None], options=None) -> list:
        """The records of ``path`` as the kind ``input_kind`` a loss takes (pair, list, unpaired,
        sft), encoded for this policy (the LM: tokenized), through the data pipeline with its
        report (``name``: train, eval, or a source's name). ``options``: the data settings of this
        one source (a ``DataConfig``) in place of the run's."""

    def load(self, path: str) -> torch.nn.Module:
        """A model of this kind from ``path`` (the policy's start, or a separate reference), in
        eval-ready form (no dropout)."""

    def trainable(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` as the loop trains it: with adapters where the config asks for them."""

    def batch(self, records: list, indices: list[int], device: torch.device) -> dict:
        """The tensors of ``records[i]`` for ``i`` in ``indices``, on ``device``."""

    def logps(self, module: torch.nn.Module, batch: dict, group: int, reference: Logps | None = None,
              full: bool = False) -> Logps:
        """(G, B, T) log-probs of the batch's responses. ``full``: also the full per-position
        distributions in ``Logps.dist`` (token-level losses); given a ``reference`` that holds
        them, the per-token KL to it in ``Logps.kl``."""

    def real_tokens(self, batch: dict, group: int, input_kind: str) -> int:
        """The data the batch holds, each unit once (``tokens_per_s``): the LM's real tokens, a
        scorer's scored items."""

    def fingerprint(self, records: list) -> str:
        """A digest of what, besides the weights and settings, decides the reference cache's values:
        the encoder (tokenizer) and the encoded records."""

    def save(self, module: torch.nn.Module, folder, weights: dict | None = None) -> None:
        """``folder`` written atomically, loadable again with ``load`` (``weights``: a full state
        dict a sharding engine gathered)."""

    def adapters_off(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        """``module`` with its adapters switched off (the adapter reference strategy)."""

    # Optional, for kinds that generate (the LM; evaluation and online rounds sample through it):
    # def sample(self, module, prompt_ids, max_new_tokens, temperature, top_p, batch_size, seed) -> list[list[int]]
    # Optional, for kinds whose records can carry the logging policy's propensities (the item_ranker;
    # the logged reference strategy, ``--ref logged``, reads them):
    # def logged_logps(self, batch, group) -> Logps

    def checks(self, spec) -> list[tuple[bool, str, str]]:
        """Settings this kind cannot honour with the loss ``spec`` (a ``losses.LossSpec``):
        (bad, field, message), as ``RunConfig.validate`` gives them."""


def response_count(records: list[Any]) -> int:
    """G: the responses per record (2 for pairs, k for lists, 1 for SFT)."""
    return records[0].responses
