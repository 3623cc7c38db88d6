"""The "reviews" preference task shipped with dpokit and used by the quickstart.

Goal: teach a small chat model to write warm, positive, enthusiastic reviews. The data is
synthetic and generated here (no third-party text): every prompt asks for a short opinion
of an invented subject (a film, novel, restaurant, gadget, ...); ``chosen`` is an
enthusiastic review and ``rejected`` a negative review of the same subject with the same
shape and length, so the only difference DPO can learn is the sentiment.

``judge`` is an independent lexicon-based sentiment scorer used to compare the trained
policy with the reference model. Its lexicon is general-purpose English, not the
generator's phrase bank, so a policy cannot score well merely by parroting training text.

Run ``python -m dpokit.tasks.reviews`` to regenerate the committed files in DEFAULT_DIR.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dpokit.store.atomic import write_jsonl
from dpokit.tasks import _lexicon
from dpokit.tasks import _review_bank as bank

DEFAULT_DIR = Path(__file__).parent / "reviews_data"

N_TRAIN = 480
N_EVAL = 64

# --------------------------------------------------------------------------- judge

_WEIGHTS: dict[str, float] = {}
for _w in _lexicon.POSITIVE:
    _WEIGHTS[_w] = 1.5 if _w in _lexicon.STRONG_POSITIVE else 1.0
for _w in _lexicon.NEGATIVE:
    _WEIGHTS[_w] = -1.5 if _w in _lexicon.STRONG_NEGATIVE else -1.0

# Letters (any script, so "café" stays one word) with inner apostrophes, or a punctuation
# mark that ends a negation scope.
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|[.,;:!?]")
_NEGATORS = frozenset(
    "not no never nothing none nobody nowhere neither nor without hardly barely scarcely "
    "cannot cant dont doesnt didnt isnt wasnt werent arent wont wouldnt couldnt shouldnt "
    "aint hasnt havent".split())
_INTENSIFIERS = {w: 1.5 for w in (
    "very really extremely incredibly so truly absolutely utterly totally remarkably "
    "especially super deeply genuinely highly thoroughly exceptionally insanely most").split()}
_INTENSIFIERS.update({w: 0.5 for w in "slightly somewhat fairly mildly kinda sorta".split()})
# Contrast words start a new clause: "not cheap, but good" must not flip "good".
_SCOPE_BREAKS = frozenset(".,;:!?") | frozenset("but however although though yet".split())
_NEGATION_SCOPE = 3
# A negated word is a weaker signal than a plain one ("not good" is milder than "bad").
_NEGATED_WEIGHT = 0.75
_REPEAT_MIN_TOKENS = 10
_REPEAT_MIN_RATIO = 0.4
_TTR_WINDOW = 50


@lru_cache(maxsize=65536)
def _lookup(word: str) -> tuple[str, float]:
    """(lemma, weight) for a lowercased word, via crude suffix stripping; weight 0 = neutral.

    The lexicon lists base forms; stripping lets "loved", "disappoints", "wonderfully",
    "horribly", "nicest" find them without listing every inflection.
    """
    cands = [word]
    if len(word) > 4:
        if word.endswith(("ies", "ier")):
            cands.append(word[:-3] + "y")
        if word.endswith("s") and not word.endswith("ss"):
            cands.append(word[:-1])
        if word.endswith("es"):
            cands.append(word[:-2])
        if word.endswith("ily"):
            cands.append(word[:-3] + "y")
        if word.endswith("bly"):
            cands.append(word[:-1] + "e")
        if word.endswith("ly"):
            cands.append(word[:-2])
        if word.endswith("ed"):
            cands += [word[:-2], word[:-1]]
        if word.endswith("ing"):
            cands += [word[:-3], word[:-3] + "e"]
        if word.endswith("est"):
            cands += [word[:-3], word[:-3] + "e"]
        elif word.endswith("er"):
            cands += [word[:-2], word[:-1]]
    for cand in cands:
        weight = _WEIGHTS.get(cand)
        if weight is not None:
            return cand, weight
    return word, 0.0


def _distinct_ratio(words: list[str]) -> float:
    # Type/token ratio falls naturally with length, so long answers are measured over
    # sliding windows instead of as a whole (a moving-average TTR).
    n = len(words)
    if n <= _TTR_WINDOW:
        return len(set(words)) / n
    starts = list(range(0, n - _TTR_WINDOW, _TTR_WINDOW // 2)) + [n - _TTR_WINDOW]
    return sum(len(set(words[s:s + _TTR_WINDOW])) for s in starts) / (len(starts) * _TTR_WINDOW)


_MODAL_NEGATIONS = frozenset("can't cannot cant couldn't couldnt".split())


def _is_emphatic(tokens: list[str], i: int) -> bool:
    """True where the negator at ``i`` emphasises rather than negates.

    "can't recommend it enough" and "couldn't be happier" are strong praise (and
    "couldn't be worse" strong criticism); flipping them would invert the meaning.
    """
    ahead = []
    for tok in tokens[i + 1:i + 6]:
        if tok in _SCOPE_BREAKS:
            break
        ahead.append(tok)
    modal = tokens[i] in _MODAL_NEGATIONS or (
        tokens[i] == "not" and i > 0 and tokens[i - 1] in ("can", "could"))
    if not modal:
        return False  # "not good enough" is a real negation
    if "enough" in ahead:
        return True
    if len(ahead) >= 2 and ahead[0] == "be":
        nxt = ahead[1]
        return nxt in ("better", "worse") or (nxt.endswith("er") and _lookup(nxt)[1] != 0)
    return False


def judge(prompt: Any, response: str) -> float:
    """Sentiment of ``response`` in [-1, 1]; higher is more positive and enthusiastic.

    ``prompt`` is accepted so every task judge has the same signature; it is ignored,
    because the task rewards positivity regardless of how the question was phrased.
    """
    del prompt
    tokens = _TOKEN.findall(response.lower().replace("\u2019", "'"))
    words = [t for t in tokens if t[0].isalpha()]
    if not words:
        return -1.0  # an empty (or punctuation-only) answer must never beat a real one

    pos = neg = 0.0
    seen: Counter[str] = Counter()
    negate_left = boost_left = 0
    boost = 1.0
    for i, tok in enumerate(tokens):
        if tok in _SCOPE_BREAKS:
            negate_left = boost_left = 0
            continue
        if tok in _NEGATORS or tok.endswith("n't"):
            negate_left = 0 if _is_emphatic(tokens, i) else _NEGATION_SCOPE
            continue
        if tok in _INTENSIFIERS:
            boost, boost_left = _INTENSIFIERS[tok], 2
            continue
        # "kind of boring" is a hedge, not kindness.
        if tok in ("kind", "sort") and i + 1 < len(tokens) and tokens[i + 1] == "of":
            continue
        lemma, weight = _lookup(tok)
        if weight:
            if boost_left:
                weight *= boost
                boost_left = 0
            # Each repeat of the same word is worth less, so "great great great" cannot
            # buy a high score.
            seen[lemma] += 1
            weight /= seen[lemma]
            if negate_left:
                weight *= -_NEGATED_WEIGHT
            if weight > 0:
                pos += weight
            else:
                neg -= weight
        negate_left = max(negate_left - 1, 0)
        boost_left = max(boost_left - 1, 0)

    score = (pos - neg) / (pos + neg + 1.0)
    if len(words) >= _REPEAT_MIN_TOKENS:
        ratio = _distinct_ratio(words)
        if ratio < _REPEAT_MIN_RATIO:
            # Degenerate, spammy text: slide smoothly towards -1 as repetition grows.
            keep = ratio / _REPEAT_MIN_RATIO
            score = score * keep - (1.0 - keep)
    return max(-1.0, min(1.0, score))


# ----------------------------------------------------------------------- generator

@dataclass(frozen=True)
class Subject:
    """An invented thing to review. ``name`` is unique across the whole dataset."""

    domain: str
    name: str
    ref: str     # how a review sentence refers to it ("the Vexa Nova" for gadgets)
    label: str   # how a prompt introduces it ("the film Copper Lantern")
    kind: str
    kinds: str
    again: str


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _make_subjects(rng: random.Random, n: int) -> list[Subject]:
    # One (adjective, noun) core is used at most once in the whole dataset, across
    # domains, so an eval subject's name can never turn up inside a train record.
    cores = [(a, b) for a in bank.NAME_ADJECTIVES for b in bank.NAME_NOUNS]
    gadget_cores = [(b, m) for b in bank.GADGET_BRANDS for m in bank.GADGET_MODELS]
    rng.shuffle(cores)
    rng.shuffle(gadget_cores)
    domains = list(bank.DOMAINS)
    subjects = []
    for i in range(n):
        key = domains[i % len(domains)]
        spec = bank.DOMAINS[key]
        if key == "gadget":
            brand, model = gadget_cores.pop()
            kind, kinds = rng.choice(bank.GADGET_PRODUCTS)
            name = f"{brand} {model}"
            ref = f"the {name}"
        else:
            adj, noun = cores.pop()
            kind, kinds = spec["kind"], spec["kinds"]
            name = ref = rng.choice(spec["names"]).format(A=adj, N=noun)
        label = spec["label"].format(name=name, kind=kind)
        subjects.append(Subject(key, name, ref, label, kind, kinds, spec["again"]))
    return subjects


def _sentence(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _word_count(text: str) -> int:
    return len(text.split())


def _review_pair(rng: random.Random, subj: Subject) -> tuple[str, str]:
    """(chosen, rejected): same structure, same aspects, opposite sentiment.

    Resampled until both are 20-45 words and within 5 words of each other, so length
    never correlates with preference (DPO would happily learn "longer is better").
    """
    spec = bank.DOMAINS[subj.domain]
    base = dict(ref=subj.ref, kind=subj.kind, a_kind=_article(subj.kind), kinds=subj.kinds,
                again=subj.again)
    while True:
        n_sentences = rng.choice((2, 3, 3))
        detail = rng.randrange(len(bank.DETAILS["pos"]))
        c1, c2 = rng.sample(range(len(spec["pos"])), 2)
        texts = []
        for pol in ("pos", "neg"):
            slots = dict(base, d1=spec[pol][c1], d2=spec[pol][c2])
            parts = [rng.choice(bank.OPENERS[pol]), bank.DETAILS[pol][detail]]
            if n_sentences == 3:
                parts.append(rng.choice(bank.CLOSERS[pol]))
            texts.append(" ".join(_sentence(p, slots) for p in parts))
        counts = [_word_count(t) for t in texts]
        if all(20 <= c <= 45 for c in counts) and abs(counts[0] - counts[1]) <= 5:
            return texts[0], texts[1]


def _record(rng: random.Random, subj: Subject) -> dict[str, list[dict[str, str]]]:
    question = _sentence(rng.choice(bank.PROMPTS), {"label": subj.label})
    chosen, rejected = _review_pair(rng, subj)
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def generate(seed: int = 0) -> dict[str, list[tuple[Subject, dict]]]:
    """The dataset in memory: ``{"train": [(subject, record), ...], "eval": [...]}``."""
    rng = random.Random(seed)
    subjects = _make_subjects(rng, N_TRAIN + N_EVAL)
    # Subjects cycle through the domains, so the first N_EVAL give a domain-balanced
    # held-out set; names were already drawn at random.
    held_out, seen = subjects[:N_EVAL], subjects[N_EVAL:]
    rng.shuffle(held_out)
    rng.shuffle(seen)
    return {
        "train": [(s, _record(rng, s)) for s in seen],
        "eval": [(s, _record(rng, s)) for s in held_out],
    }


def build(out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write train.jsonl, eval.jsonl and prompts.jsonl into ``out_dir``; return counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = generate(seed)
    train = [r for _, r in data["train"]]
    held_out = [r for _, r in data["eval"]]
    prompts = [{"prompt": r["prompt"]} for r in held_out]
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", held_out)
    write_jsonl(out_dir / "prompts.jsonl", prompts)
    return {"train": len(train), "eval": len(held_out), "prompts": len(prompts)}


def main() -> None:
    counts = build(DEFAULT_DIR)
    print(f"wrote {DEFAULT_DIR}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
