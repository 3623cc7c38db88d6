"""Settings of ``dpokit online``: the round loop's own section on top of a normal run config.

``OnlineConfig`` is a ``RunConfig`` (model, lora, data, loss, train: the training settings of
every round, with the same flags as ``dpokit dpo``) plus an ``online`` section. The training
data is not given: each round writes its own pairs, so ``data.train`` stays empty.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dpokit.config import RunConfig
from dpokit.config.flags import config_flags, spellings
from dpokit.errors import UserError


@dataclass
class OnlineSettings:
    """The round loop: sample, judge, pair, train, evaluate (docs/online.md)."""

    prompts: str = ""
    """Prompts to sample answers for: records with a ``prompt`` field (string or chat messages)."""
    judge: str = ""
    """The judge: ``fn:package.module:function`` (or without ``fn:``), ``rm:PATH`` (a reward model),
    ``llm:PATH`` (a causal LM asked with a rubric) or ``self`` (the round's policy as that LLM judge)."""
    judge_mode: Literal["score", "pairwise"] = "score"
    """LLM and self judges: score each answer 1–10, or compare two answers (A or B, both orders)."""
    judge_rubric: str = ""
    """LLM and self judges: a text file whose instructions replace the default rubric."""
    rounds: int = 3
    """Rounds of sample → judge → pair → train → evaluate."""
    samples_per_prompt: int = 4
    """Answers sampled per prompt from the current policy (K ≥ 2)."""
    prompts_per_round: int = 0
    """Prompts used per round, taken in turn from ``prompts`` (0: all of them every round)."""
    pairing: Literal["best-worst", "all", "list"] = "best-worst"
    """Pairs from a prompt's answers: best vs worst, every pair whose scores differ by more than
    ``min_margin``, or one ranked list of the answers (for listwise losses)."""
    min_margin: float = 0.0
    """A pair needs score(chosen) − score(rejected) > this (a list: best − worst > this); other answers
    are discarded."""
    max_pairs: int = 0
    """Pairs per round at most: the round keeps the fewest prompts, in order, that give this many
    (a prompt's pairs stay together), e.g. to compare runs on the same pair budget (0: no limit)."""
    list_size: int = 0
    """``list`` pairing: answers per list (0: all ``samples_per_prompt``, or ``rso_accept`` with RSO sampling)."""
    sampling: Literal["plain", "rso"] = "plain"
    """``plain``: pair the K sampled answers; ``rso``: first keep ``rso_accept`` of them by statistical
    rejection sampling towards π* ∝ π·exp(r/β) (Liu 2023; train with ``--loss rso``)."""
    rso_beta: float = 0.5
    """RSO sampling: β of the target exp(r/β), in the judge's score units (large: near uniform; small: the best)."""
    rso_accept: int = 2
    """RSO sampling: answers to accept per prompt (fewer than ``samples_per_prompt``)."""
    backend: Literal["auto", "hf", "vllm"] = "auto"
    """Sampling backend: ``auto`` takes vLLM where it is installed, CUDA is available and its self-check
    against HF passed for the policy (docs/online.md), else HF generate; ``hf``; ``vllm``."""
    ref_update: Literal["fixed", "round"] = "fixed"
    """Reference of each round: the initial model (fixed), or the previous round's policy (round, sDPO)."""
    sample_from: Literal["current", "initial"] = "current"
    """Policy each round samples: the one being trained (online), or always the initial model (pairs as
    offline, trained in rounds: a control for experiments)."""
    max_new_tokens: int = 64
    """Answer budget per sample."""
    temperature: float = 1.0
    """Sampling temperature of the candidates."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the candidates."""
    generation_batch_size: int = 16
    """Sequences per generation batch (sampling and evaluation)."""
    eval_prompts: str = ""
    """Held-out prompts for each round's evaluation against the initial model (default: ``prompts``)."""
    eval_num_prompts: int = 0
    """Evaluate on the first N held-out prompts (0: all)."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (not self.prompts, "online.prompts", "is required (--prompts)"),
            (not self.judge, "online.judge",
             "is required (--judge package.module:function, rm:PATH, llm:PATH or self)"),
            (self.rounds < 1, "online.rounds", "must be ≥ 1"),
            (self.samples_per_prompt < 2, "online.samples_per_prompt", "must be ≥ 2: a pair needs two answers"),
            (self.prompts_per_round < 0, "online.prompts_per_round", "must be ≥ 0 (0: all prompts)"),
            (self.min_margin < 0, "online.min_margin", "must be ≥ 0"),
            (self.max_pairs < 0, "online.max_pairs", "must be ≥ 0 (0: no limit)"),
            (self.max_new_tokens < 1, "online.max_new_tokens", "must be ≥ 1"),
            (self.temperature <= 0, "online.temperature", "must be > 0: candidates are sampled"),
            (not 0 < self.top_p <= 1, "online.top_p", "must be in (0, 1]"),
            (self.generation_batch_size < 1, "online.generation_batch_size", "must be ≥ 1"),
            (self.eval_num_prompts < 0, "online.eval_num_prompts", "must be ≥ 0 (0: all)"),
            (self.sampling == "rso" and not self.rso_beta > 0, "online.rso_beta", "must be > 0"),
            (self.sampling == "rso" and not 2 <= self.rso_accept < self.samples_per_prompt, "online.rso_accept",
             "must be ≥ 2 and below online.samples_per_prompt: RSO draws more candidates than it keeps"),
            (self.list_size != 0 and not 2 <= self.list_size <= self.pool_size(), "online.list_size",
             f"must be 0 or from 2 to the answers kept per prompt ({self.pool_size()})"),
        ]

    def pool_size(self) -> int:
        """Answers per prompt that pairing sees: those sampled, or those RSO accepts."""
        return self.rso_accept if self.sampling == "rso" else self.samples_per_prompt

    def judge_checks(self) -> None:
        """Settings that apply to some judges only are refused for the others, never ignored."""
        from dpokit.eval.judges import parse_spec

        kind, target = parse_spec(self.judge)
        from dpokit.policies.lm.load import BUILTIN_SMOLLM2

        if kind in ("rm", "llm") and target != BUILTIN_SMOLLM2:  # now, not after sampling
            from dpokit.policies.lm.load import resolve_model_path

            try:
                resolve_model_path(target)
            except UserError as exc:
                raise UserError(f"the judge's model is not usable: {exc.detail}", where=target,
                                field="online.judge") from None
        if kind in ("llm", "self") and self.judge_rubric:
            from dpokit.eval.model_judges import read_rubric

            read_rubric(self.judge_rubric, self.judge_mode)
        if kind in ("fn", "rm") and self.judge_mode != "score":
            why = "a function judge is pairwise when it takes three arguments" if kind == "fn" else \
                "a reward model scores answers"
            raise UserError(f"applies to llm: and self judges only ({why})", where="config",
                            field="online.judge_mode")
        if kind in ("fn", "rm") and self.judge_rubric:
            raise UserError("applies to llm: and self judges only", where="config", field="online.judge_rubric")


@dataclass
class OnlineConfig(RunConfig):
    """A run config whose training data is made by the round loop, plus the loop's settings."""

    online: OnlineSettings = field(default_factory=OnlineSettings)

    def validate(self) -> OnlineConfig:
        """The loop's own checks, then the training config's, as round 1 will run it. Any loss works:
        the data pipeline turns the round's pairs into the loss's records (lists of two, unpaired
        examples, or the chosen answers)."""
        for bad, key, msg in self.online.checks():
            if bad:
                raise UserError(msg, where="config", field=key)
        self.online.judge_checks()
        if self.data.train:
            raise UserError("each round writes its own pairs; drop --data", where="config", field="data.train")
        if self.train.resume:
            raise UserError("an online run resumes by itself when rerun; drop --resume", where="config",
                            field="train.resume")
        if self.model.policy != "causal_lm":
            raise UserError("online rounds sample answers from the policy, which only causal_lm does", where="config",
                            field="model.policy")
        first = self.round_config(1, self.model.path, self.model.ref_path, "(round pairs)", self.train.output)
        self._kind_checks(first)
        from dpokit.online.sampling import check_backend

        check_backend(self.online.backend)
        return self

    def _kind_checks(self, cfg: RunConfig) -> None:
        """Listwise losses train on ranked lists, and lists are only for them (a list of two is a pair)."""
        from dpokit.losses import get_loss, losses_for

        listwise, lists = get_loss(cfg.loss.name).input_kind == "list", self.online.pairing == "list"
        if listwise and not lists:
            raise UserError(f"the listwise loss {cfg.loss.name!r} needs ranked lists: add --pairing list",
                            where="config", field="online.pairing")
        if lists and not listwise:
            raise UserError(f"--pairing list writes ranked lists, which {cfg.loss.name!r} does not take; use a "
                            f"listwise loss ({', '.join(losses_for('list'))}) or pairs", where="config",
                            field="online.pairing")

    def round_config(self, round_no: int, model: str, ref: str | None, pairs: str, output: str) -> RunConfig:
        """The validated training config of one round."""
        cfg = RunConfig(**{name: copy.deepcopy(getattr(self, name)) for name in ("model", "lora", "data", "loss",
                                                                                  "train")})
        cfg.model.path, cfg.model.ref_path = model, ref
        # lists are written as rated records: prompt, completions best first, scores
        cfg.data.train, cfg.train.output = pairs, output
        # the rounds report beside the online run: in its trackers folder, named after it
        t = self.train
        cfg.train.trackers_dir = t.trackers_dir or str(Path(t.output) / "trackers")
        cfg.train.run_name = f"{t.run_name or Path(t.output).resolve().name}-round-{round_no}"
        cfg.data.format = "rated" if self.online.pairing == "list" else "pairs"
        try:
            return cfg.validate()
        except UserError as exc:
            where = "config" if round_no == 1 else f"config (round {round_no})"
            raise UserError(exc.detail, where=where, field=exc.field) from None


SET_BY_LOOP = {"data.train", "data.format", "train.resume", "data.pairing", "data.min_margin", "data.columns",
               "data.votes", "data.ties", "data.click_min_dwell", "data.click_bias", "data.balance", "data.balance_by"}
"""Training settings the round loop sets itself, or that do not apply to the pairs it writes (no flag)."""

ONLINE_FLAG_SET = config_flags(OnlineConfig, skip=SET_BY_LOOP)
"""The flags of ``dpokit online``: those of ``dpokit dpo`` (less those the loop sets) and its own."""
ONLINE_FLAGS: dict[str, str] = spellings(ONLINE_FLAG_SET)
"""Each spelling of an online flag (underscores) -> the field it sets."""
