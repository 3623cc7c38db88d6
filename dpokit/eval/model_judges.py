"""Judges that are local HF models: a reward model (``rm:PATH``) and an LLM asked with a rubric
(``llm:PATH``, and ``self``: the policy itself, as in self-rewarding LMs, Yuan et al. 2024).

Both read numbers off the model instead of parsing generated text, so they cannot fail to parse:

- **Reward model**: ``AutoModelForSequenceClassification``. The score is the logit of a
  one-label head; with several labels, the log-odds of the last label,
  log p_last − log(1 − p_last) = z_last − logsumexp(z_others) (for the usual two-label
  "bad/good" head: z_good − z_bad). The exchange is rendered with the tokenizer's chat template
  (user prompt, assistant answer) when it has one, else as the text pair (prompt, answer) the
  way cross-encoder reward models were trained. HF reads the score at the last non-padding token.
- **LLM, pointwise**: the rubric asks for a score from 1 to 10; the judge reads the next-token
  probabilities of the score tokens and returns the expected score Σ s·p(s) / Σ p(s), which is
  smooth and never unparseable. "10" is usually two tokens ("1", "0"): one forward pass over the
  request followed by "1" gives both p(first token) and p("0" | "1"), so p(10) = p("1")·p("0"|"1")
  (+ p("10") where "10" is one token) and p(1) = p("1")·(1 − p("0"|"1")).
- **LLM, pairwise**: the rubric asks "A or B"; P(first better) = p(A) / (p(A) + p(B)) from the
  next-token distribution, for the order given (``judges.both_orders`` asks both).

A judgement fails (None) only when the model puts no probability at all on a valid answer. The
probability mass on valid answers is summed in ``stats`` (over ``stats["judgements"]``): a low
mean says the judge does not follow the rubric (a random or base model), and its scores mean little.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from dpokit.errors import UserError
from dpokit.precision import resolve as resolve_precision

DEFAULT_RUBRICS = {
    "score": "Rate the response to the question below for helpfulness, correctness and clarity, on a scale "
             "from 1 (worst) to 10 (best). Answer with the number only.",
    "pairwise": "Which of the two responses below answers the question better (more helpful, correct and "
                "clear)? Answer with the letter A or B only.",
}
SCORE_TOKENS = [str(s) for s in range(1, 10)]


def model_identity(path: str) -> str:
    """What identifies a judge model in cache keys: its dpokit manifest digest, else a hash of its
    resolved path and its weight files' names, sizes and modification times (a model replaced in
    place gets new keys)."""
    from dpokit.policies.lm.paths import concrete_path
    from dpokit.store.atomic import folder_digest

    p = Path(concrete_path(path))  # registry:...@current names another model once another is promoted
    if p.is_dir() and (digest := folder_digest(p)):
        return digest
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.glob("*.safetensors")) \
        if p.is_dir() else []
    return hashlib.sha256(json.dumps([str(p.resolve()), files]).encode()).hexdigest()


def read_rubric(path: str, mode: str) -> str:
    """The judge's instructions: the file's text, or the default rubric of ``mode``."""
    if not path:
        return DEFAULT_RUBRICS[mode]
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the rubric: {exc}", where=path, field="online.judge_rubric") from None
    if not text:
        raise UserError("the rubric is empty", where=path, field="online.judge_rubric")
    return text


def reward_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, L) classification logits -> (B,) rewards: the logit for L = 1, else the last label's log-odds."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return logits[:, 0]
    return logits[:, -1] - torch.logsumexp(logits[:, :-1], dim=-1)


def expected_score(first: dict[str, float], zero_after_one: float) -> tuple[float | None, float]:
    """(expected score on 1..10 or None, probability mass on valid scores) from the probabilities of
    the first answer token (keys "1".."9", and "10" when it is one token) and p("0" | "1")."""
    probs = {int(s): first.get(s, 0.0) for s in SCORE_TOKENS}
    probs[1] = first.get("1", 0.0) * (1.0 - zero_after_one)
    probs[10] = first.get("1", 0.0) * zero_after_one + first.get("10", 0.0)
    mass = sum(probs.values())
    if not mass > 0:  # also catches NaN
        return None, 0.0
    return sum(s * p for s, p in probs.items()) / mass, mass


def preference(p_a: float, p_b: float) -> float | None:
    """P(A better) from the probabilities of answering A and B, renormalised over the two."""
    return p_a / (p_a + p_b) if p_a + p_b > 0 else None


class _ModelJudge:
    """Loads its model on first use (a rerun whose judgements are all cached loads nothing)."""

    def __init__(self, path: str, batch_size: int, trust_remote_code: bool, allow_pickle: bool, dtype: str):
        self.path, self.batch_size = path, batch_size
        self.precision = resolve_precision(dtype, self._device().type)
        self.trust_remote_code, self.allow_pickle = trust_remote_code, allow_pickle
        self.model = self.tokenizer = None
        self.stats = {"judgements": 0, "failures": 0}

    def _device(self):
        from accelerate import Accelerator

        return Accelerator().device

    def _autocast(self):
        return self.precision.autocast(self.model.device)()

    def close(self) -> None:
        """Free the model (the next call loads it again)."""
        self.model = None

    def reset_stats(self) -> None:
        """Start counting afresh (each round reports its own judgements)."""
        self.stats = dict.fromkeys(self.stats, 0)


class RewardModelJudge(_ModelJudge):
    pointwise = True

    def __init__(self, path: str, batch_size: int = 16, trust_remote_code: bool = False, allow_pickle: bool = False,
                 dtype: str = "auto"):
        super().__init__(path, batch_size, trust_remote_code, allow_pickle, dtype)
        self.identity = f"rm:{model_identity(path)}:{self.precision.name}"

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        from dpokit.policies.lm.load import _weights_file_check, hub_allowed, load_tokenizer, resolve_model_path

        source = resolve_model_path(self.path)  # the same answer as every other loader
        if source.kind != "folder":
            raise UserError(f"a reward model must be a HF model folder, not a {source.kind} "
                            f"{'file' if source.gguf else 'folder'}", where=self.path, field="online.judge")
        folder = source.folder
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=not hub_allowed(), trust_remote_code=self.trust_remote_code,
                dtype=torch.float32, use_safetensors=_weights_file_check(folder, self.path, self.allow_pickle),
                output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a sequence-classification model: {str(exc).splitlines()[0]}",
                            where=self.path) from None
        if info["missing_keys"]:  # e.g. a causal LM: HF would give it a random head, and random scores
            missing = ", ".join(sorted(info["missing_keys"])[:3])
            raise UserError(f"not a reward model: weights missing from the folder ({missing}); give a "
                            "sequence-classification model", where=self.path, field="online.judge")
        tok = load_tokenizer(self.path, self.trust_remote_code)
        tok.padding_side = "right"  # positions stay those of the unpadded text; HF finds the last real token
        if model.config.pad_token_id is None:  # needed by HF to find each row's last token in a batch
            model.config.pad_token_id = tok.pad_token_id
        self.model, self.tokenizer = model.to(self._device()).eval(), tok

    @torch.no_grad()
    def score(self, prompt: str, answers: Sequence[str]) -> list[float | None]:
        if self.model is None:
            self._load()
        out: list[float | None] = []
        for start in range(0, len(answers), self.batch_size):
            enc = self._encode(prompt, list(answers[start:start + self.batch_size]))
            with self._autocast():
                logits = self.model(**enc).logits
            out += [float(x) for x in reward_from_logits(logits.float())]
        self.stats["judgements"] += len(out)
        return out

    def _encode(self, prompt: str, answers: list[str]) -> dict:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": a}], tokenize=False) for a in answers]
            enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        else:
            enc = tok([prompt] * len(answers), answers, padding=True, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def compare(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        raise TypeError("a reward model scores answers; it does not compare them")


class LLMJudge(_ModelJudge):
    """A causal LM asked with a rubric: a score from 1 to 10 (``mode`` score) or A/B (pairwise)."""

    def __init__(self, path: str, mode: str = "score", rubric: str = "", label: str = "llm", batch_size: int = 16,
                 trust_remote_code: bool = False, allow_pickle: bool = False, dtype: str = "auto"):
        super().__init__(path, batch_size, trust_remote_code, allow_pickle, dtype)
        if mode not in DEFAULT_RUBRICS:
            raise UserError(f"unknown judge mode {mode!r} (score or pairwise)", where="config",
                            field="online.judge_mode")
        self.mode, self.pointwise = mode, mode == "score"
        self.rubric = read_rubric(rubric, mode)
        rubric_hash = hashlib.sha256(self.rubric.encode()).hexdigest()[:16]
        self.identity = f"{label}:{model_identity(path)}:{mode}:{rubric_hash}:{self.precision.name}"
        self.stats["valid_mass"] = 0.0
        self.token_ids: dict[str, int] = {}
        self._chat = False

    def _load(self) -> None:
        from dpokit.policies.lm.load import disable_dropout, load_model, load_tokenizer

        tok = load_tokenizer(self.path, self.trust_remote_code)
        model = load_model(self.path, self.trust_remote_code, allow_pickle=self.allow_pickle)
        disable_dropout(model)
        self.model, self.tokenizer = model.to(self._device()).eval(), tok
        self._chat = bool(getattr(tok, "chat_template", None))
        probe = self._render("question", ("answer", "answer"))
        names = SCORE_TOKENS + ["0", "10"] if self.pointwise else ["A", "B"]
        self.token_ids = {s: i for s in names if (i := self._answer_token(probe, s)) is not None}
        missing = [s for s in names if s not in self.token_ids and s != "10"]
        if missing:
            raise UserError(f"the judge's tokenizer does not write {', '.join(missing)} as one token after the "
                            "judge prompt; its answer cannot be read", where=self.path)

    def _answer_token(self, request: str, text: str) -> int | None:
        """The single token ``text`` adds after the rendered request, or None when it is not one token."""
        head, full = self._ids(request), self._ids(request + text)
        extra = full[len(head):]
        return extra[0] if full[:len(head)] == head and len(extra) == 1 else None

    def _ids(self, text: str) -> list[int]:
        # a chat template writes its own special tokens; plain text takes the tokenizer's (a BOS)
        return self.tokenizer(text, add_special_tokens=not self._chat)["input_ids"]

    def _render(self, prompt: str, answers: tuple[str, ...]) -> str:
        """The judge's request as text, ending where its one-token answer starts."""
        if self.pointwise:
            body = f"{self.rubric}\n\n[Question]\n{prompt}\n\n[Response]\n{answers[0]}"
            tail = "[Score]"
        else:
            body = (f"{self.rubric}\n\n[Question]\n{prompt}\n\n[Response A]\n{answers[0]}\n\n"
                    f"[Response B]\n{answers[1]}")
            tail = "[Better response]"
        if self._chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{body}\n\n{tail}\n"  # the answer starts a new line, so its first token has no space

    def _request(self, prompt: str, answers: tuple[str, ...]) -> list[int]:
        return self._ids(self._render(prompt, answers))

    @torch.no_grad()
    def _next_token_probs(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """(N, keep, V) next-token probabilities at each row's last ``keep`` positions. Rows are
        left-padded so those positions line up; position ids count real tokens only, so padding
        changes nothing."""
        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk], device=self.model.device)
            attn = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=self.model.device)
            positions = (attn.cumsum(-1) - 1).clamp(min=0)
            with self._autocast():
                logits = self.model(input_ids=ids, attention_mask=attn, position_ids=positions,
                                    logits_to_keep=keep).logits
            out.append(torch.softmax(logits[:, -keep:].float(), dim=-1).cpu())
        return torch.cat(out)

    def score(self, prompt: str, answers: Sequence[str]) -> list[float | None]:
        if not self.pointwise:
            raise TypeError("a pairwise LLM judge compares answers; it does not score them")
        if self.model is None:
            self._load()
        one = self.token_ids["1"]
        probs = self._next_token_probs([self._request(prompt, (a,)) + [one] for a in answers], keep=2)
        out = []
        for row in probs:
            first = {s: float(row[0, i]) for s, i in self.token_ids.items() if s != "0"}
            value, mass = expected_score(first, float(row[1, self.token_ids["0"]]))
            out.append(self._count(value, mass))
        return out

    def compare(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        if self.pointwise:
            raise TypeError("a scoring LLM judge scores answers; it does not compare them")
        if self.model is None:
            self._load()
        probs = self._next_token_probs([self._request(prompt, pair) for pair in pairs], keep=1)[:, 0]
        a, b = self.token_ids["A"], self.token_ids["B"]
        return [self._count(preference(float(row[a]), float(row[b])), float(row[a] + row[b])) for row in probs]

    def _count(self, value: float | None, mass: float) -> float | None:
        self.stats["judgements"] += 1
        self.stats["failures"] += value is None
        self.stats["valid_mass"] += mass
        return value
