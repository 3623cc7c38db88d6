"""Tests for the shipped "reviews" preference task: data builder and sentiment judge."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from dpokit.tasks import _lexicon, _review_bank, reviews

FILES = ("train.jsonl", "eval.jsonl", "prompts.jsonl")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _text(messages: list[dict]) -> str:
    return messages[0]["content"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reviews")
    counts = reviews.build(out)
    assert counts == {"train": 480, "eval": 64, "prompts": 64}
    return out


@pytest.fixture(scope="module")
def data() -> dict:
    return reviews.generate(0)


# ------------------------------------------------------------------------- builder

def test_build_is_deterministic(built, tmp_path):
    reviews.build(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name


def test_different_seed_gives_different_data(built, tmp_path):
    reviews.build(tmp_path, seed=1)
    assert (tmp_path / "train.jsonl").read_bytes() != (built / "train.jsonl").read_bytes()


def test_committed_files_match_a_fresh_build(built):
    for name in FILES:
        committed = reviews.DEFAULT_DIR / name
        assert committed.is_file(), f"{committed} missing: run python -m dpokit.tasks.reviews"
        assert committed.read_bytes() == (built / name).read_bytes(), (
            f"{committed} is stale: run python -m dpokit.tasks.reviews")


def test_counts(built):
    assert len(_read_jsonl(built / "train.jsonl")) == 480
    assert len(_read_jsonl(built / "eval.jsonl")) == 64
    assert len(_read_jsonl(built / "prompts.jsonl")) == 64


def _assert_messages(value, role):
    assert isinstance(value, list) and len(value) == 1
    msg = value[0]
    assert set(msg) == {"role", "content"}
    assert msg["role"] == role
    assert isinstance(msg["content"], str) and msg["content"].strip() == msg["content"]
    assert msg["content"]


def test_record_shape(built):
    for name in ("train.jsonl", "eval.jsonl"):
        for rec in _read_jsonl(built / name):
            assert set(rec) == {"prompt", "chosen", "rejected"}
            _assert_messages(rec["prompt"], "user")
            _assert_messages(rec["chosen"], "assistant")
            _assert_messages(rec["rejected"], "assistant")
            assert _text(rec["chosen"]) != _text(rec["rejected"])
    for rec in _read_jsonl(built / "prompts.jsonl"):
        assert set(rec) == {"prompt"}
        _assert_messages(rec["prompt"], "user")


def test_files_are_utf8_not_ascii_escaped(built):
    raw = (built / "train.jsonl").read_text(encoding="utf-8")
    assert "café" in raw and "\\u00e9" not in raw


def test_prompts_are_eval_prompts_in_order(built):
    evals = _read_jsonl(built / "eval.jsonl")
    prompts = _read_jsonl(built / "prompts.jsonl")
    assert [p["prompt"] for p in prompts] == [r["prompt"] for r in evals]


def test_no_duplicate_pairs(built):
    recs = _read_jsonl(built / "train.jsonl") + _read_jsonl(built / "eval.jsonl")
    keys = {json.dumps(r, sort_keys=True) for r in recs}
    assert len(keys) == len(recs)
    assert len({_text(r["chosen"]) for r in recs}) == len(recs)


def test_train_and_eval_subjects_are_disjoint(data, built):
    train_names = {s.name for s, _ in data["train"]}
    eval_names = {s.name for s, _ in data["eval"]}
    assert len(train_names) == 480 and len(eval_names) == 64
    assert not train_names & eval_names
    # Stronger: no eval subject name appears anywhere in the train file.
    train_text = (built / "train.jsonl").read_text(encoding="utf-8")
    for name in eval_names:
        assert not re.search(rf"\b{re.escape(name)}\b", train_text), name


def test_every_record_mentions_its_subject(data):
    for split in ("train", "eval"):
        for subj, rec in data[split]:
            assert subj.name in _text(rec["prompt"])
            assert subj.name in _text(rec["chosen"])
            assert subj.name in _text(rec["rejected"])


def test_variety_of_domains_and_prompts(data):
    pairs = data["train"] + data["eval"]
    assert len({s.domain for s, _ in pairs}) >= 10
    assert len({s.domain for s, _ in data["eval"]}) >= 10
    assert len(_review_bank.PROMPTS) >= 12
    # Every phrasing is actually used (strip the subject label to recover the template).
    used = {_text(r["prompt"]).replace(s.label, "{label}").lower() for s, r in pairs}
    assert used == {p.lower() for p in _review_bank.PROMPTS}
    for pol in ("pos", "neg"):
        n_templates = sum(len(bank[pol]) for bank in
                          (_review_bank.OPENERS, _review_bank.DETAILS, _review_bank.CLOSERS))
        assert n_templates >= 25


def test_chosen_and_rejected_differ_in_sentiment_not_length(built):
    recs = _read_jsonl(built / "train.jsonl") + _read_jsonl(built / "eval.jsonl")
    chosen = [len(_text(r["chosen"]).split()) for r in recs]
    rejected = [len(_text(r["rejected"]).split()) for r in recs]
    assert all(20 <= n <= 45 for n in chosen + rejected)
    mc, mr = statistics.mean(chosen), statistics.mean(rejected)
    assert abs(mc - mr) / max(mc, mr) < 0.15
    for r in recs:
        n_sent = [len(re.findall(r"[.!?](?:\s|$)", _text(r[k]))) for k in ("chosen", "rejected")]
        assert n_sent[0] == n_sent[1] and 1 <= n_sent[0] <= 3


def test_subject_names_are_sentiment_neutral(data):
    for subj, _ in data["train"] + data["eval"]:
        assert reviews.judge("", subj.name) == 0.0, subj.name


# --------------------------------------------------------------------------- judge

def test_lexicon_is_general_purpose():
    assert len(_lexicon.POSITIVE) >= 150 and len(_lexicon.NEGATIVE) >= 150
    assert not _lexicon.POSITIVE & _lexicon.NEGATIVE
    assert _lexicon.STRONG_POSITIVE <= _lexicon.POSITIVE
    assert _lexicon.STRONG_NEGATIVE <= _lexicon.NEGATIVE


def test_judge_prefers_chosen_on_eval_pairs(built):
    recs = _read_jsonl(built / "eval.jsonl")
    wins = sum(reviews.judge(_text(r["prompt"]), _text(r["chosen"]))
               > reviews.judge(_text(r["prompt"]), _text(r["rejected"])) for r in recs)
    assert wins / len(recs) >= 0.95


POSITIVE_SENTENCES = [
    "Absolutely loved this place, the staff were so kind and the soup was delicious.",
    "A beautiful, moving story with wonderful performances.",
    "This blender is fantastic: powerful, easy to clean and surprisingly quiet.",
    "I had a great time and would definitely go back next summer.",
    "The hike was breathtaking and our guide was very knowledgeable.",
    "What a fun, clever little game!",
    "Honestly one of the best books I've read in years; I adore it.",
    "The new update made the app faster and much more reliable. Impressive work.",
    "Cosy rooms, friendly hosts and a stunning view of the bay.",
    "Their pizza is perfect and the prices are fair.",
]

NEGATIVE_SENTENCES = [
    "The hotel room was filthy and the receptionist was rude.",
    "Boring plot, terrible acting, a complete waste of two hours.",
    "My phone died after a week and the battery is awful.",
    "The coffee tasted burnt and the muffin was stale.",
    "I hated every minute of this tedious concert.",
    "Sadly, the sequel is a disappointing mess.",
    "The instructions were confusing and the parts felt flimsy.",
    "Overpriced, bland food served by indifferent waiters.",
    "The museum was cramped, stuffy and frankly dull.",
    "Such an ugly, buggy game; I regret buying it.",
]


@pytest.mark.parametrize("text", POSITIVE_SENTENCES)
def test_judge_handwritten_positive(text):
    assert reviews.judge("", text) > 0


@pytest.mark.parametrize("text", NEGATIVE_SENTENCES)
def test_judge_handwritten_negative(text):
    assert reviews.judge("", text) < 0


def test_judge_handwritten_sets_are_separated():
    assert (min(reviews.judge("", t) for t in POSITIVE_SENTENCES)
            > max(reviews.judge("", t) for t in NEGATIVE_SENTENCES))


@pytest.mark.parametrize("text, sign", [
    ("The food was not good.", -1),
    ("It wasn't great.", -1),
    ("It wasn’t great.", -1),  # typographic apostrophe
    ("There was no fun to be had.", -1),
    ("I didn't enjoy a single minute.", -1),
    ("The movie was never boring.", 1),
    ("Honestly, not bad at all.", 1),
    ("The staff were never rude.", 1),
    ("The food was not good enough.", -1),
    ("I can't recommend it to anyone.", -1),
    # Emphatic idioms where the negator intensifies instead of flipping.
    ("I can't recommend it enough!", 1),
    ("I couldn't be happier with it.", 1),
    ("It couldn't be worse.", -1),
])
def test_judge_negation(text, sign):
    assert reviews.judge("", text) * sign > 0


def test_negation_scope_ends_at_clause_boundary():
    # "good" sits after the comma and the contrast word, so it is not negated.
    assert reviews.judge("", "It isn't cheap, but the food is good.") > 0
    assert reviews.judge("", "The service was not good.") < reviews.judge(
        "", "The service was good.")


def test_judge_more_and_stronger_positive_words_score_higher():
    one = reviews.judge("", "The film is good.")
    two = reviews.judge("", "The film is good and funny.")
    strong = reviews.judge("", "The film is excellent.")
    intensified = reviews.judge("", "The film is really good.")
    assert 0 < one < two
    assert one < strong
    assert one < intensified


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...", "!!"])
def test_judge_empty_is_minus_one(text):
    assert reviews.judge("Review it.", text) == -1.0


def test_empty_never_beats_a_real_answer():
    for text in POSITIVE_SENTENCES + NEGATIVE_SENTENCES + ["It is a film."]:
        assert reviews.judge("", text) > reviews.judge("", "")


def test_judge_penalises_repetition_spam():
    normal = reviews.judge("", "The food was great and the staff were friendly.")
    for spam in ["great " * 30,
                 "great great great great great great great great great great",
                 "This is great! " * 8,
                 "amazing wonderful fantastic " * 10]:
        assert reviews.judge("", spam) < normal, spam
        assert reviews.judge("", spam) < 0, spam


def test_long_natural_text_is_not_penalised_as_repetitive():
    text = " ".join(POSITIVE_SENTENCES * 2)  # varied sentences, each said twice
    assert reviews.judge("", text) > 0.5


def test_judge_range_and_prompt_is_ignored(built):
    texts = [t for r in _read_jsonl(built / "train.jsonl")
             for t in (_text(r["chosen"]), _text(r["rejected"]))]
    texts += POSITIVE_SENTENCES + NEGATIVE_SENTENCES
    texts += ["excellent " * 200, "awful " * 200, "not " * 50, "wonderful!!! " * 3]
    for text in texts:
        score = reviews.judge("", text)
        assert -1.0 <= score <= 1.0
    assert reviews.judge("Was it any good?", texts[0]) == reviews.judge("", texts[0])


def test_judge_does_one_cached_lookup_per_word(built):
    """The judge is cheap (online rounds call it for every candidate): at most one lexicon lookup
    per token, so its work grows linearly with the text, and the lookups are cached, so judging the
    same texts again strips no suffix anew. Work counted, not timed."""
    texts = [_text(r["chosen"]) for r in _read_jsonl(built / "train.jsonl")][:1000]
    tokens = sum(len(reviews._TOKEN.findall(t.lower().replace("\u2019", "'"))) for t in texts)
    reviews._lookup.cache_clear()
    scores = [reviews.judge("", t) for t in texts]
    first = reviews._lookup.cache_info()
    assert 0 < first.hits + first.misses <= tokens
    assert [reviews.judge("", t) for t in texts] == scores
    again = reviews._lookup.cache_info()
    assert again.misses == first.misses and again.hits - first.hits == first.hits + first.misses
