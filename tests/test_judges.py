"""Judges behind one interface (dpokit/eval/judges.py, model_judges.py): Python functions, a reward
model and an LLM-as-judge built as tiny random HF models here, and the on-disk cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dpokit.errors import UserError
from dpokit.eval.judges import FunctionJudge, both_orders, load_judge, parse_spec
from dpokit.eval.model_judges import expected_score, preference, reward_from_logits
from dpokit.online.judging import CachedJudge, JudgeCache, RunJudges, candidate_scores
from dpokit.online.config import OnlineSettings
from dpokit.policies.lm.tiny import tiny_tokenizer, write_tiny_model

ANSWERS = ["four", "It is 4, because two and two make four.", "5", "", "four"]


def write_reward_model(folder: Path, labels: int, seed: int = 0) -> Path:
    """A tiny random LlamaForSequenceClassification with the shipped tokenizer (ChatML template)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=labels,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judges")
    return {"rm1": write_reward_model(tmp / "rm1", 1), "rm2": write_reward_model(tmp / "rm2", 2, seed=1),
            "llm": write_tiny_model(tmp / "llm"), "llm2": write_tiny_model(tmp / "llm2", seed=1), "tmp": tmp}


def test_specs():
    assert parse_spec("helpers.judges:count_e") == ("fn", "helpers.judges:count_e")
    assert parse_spec("fn:helpers.judges:count_e") == ("fn", "helpers.judges:count_e")
    assert parse_spec("rm:/m") == ("rm", "/m") and parse_spec("llm:/m") == ("llm", "/m")
    assert parse_spec("self") == ("self", "")
    with pytest.raises(UserError, match="after 'rm:'"):
        parse_spec("rm:")
    # both spellings of a function judge are one judge, with one cache identity
    assert FunctionJudge("helpers.judges:count_e").identity == load_judge("fn:helpers.judges:count_e").identity


def test_function_judge_failures_are_none(tmp_path):
    judge = load_judge("helpers.judges:broken")
    assert judge.score("p", ["a", "ab", "abc"]) == [1.0, None, None]  # NaN and a string are failures
    cache = JudgeCache(tmp_path / "c.json")
    cached = CachedJudge(judge, cache)
    assert cached.score("p", ["ab"]) == [None] and cached.failed == 1
    cache.save()
    assert list(JudgeCache(tmp_path / "c.json").values.values()) == [None]  # a failure is cached too


def test_a_raising_function_is_a_counted_failure(tmp_path):
    """An exception inside a function judge fails that judgement only, in online rounds (through
    the cache) as in eval; the first error is kept for the report."""
    judge = load_judge("helpers.judges:raises_on_p1")
    assert judge.score("P0", ["e", "ee"]) == [1.0, 2.0] and judge.first_error is None
    cached = CachedJudge(judge, JudgeCache(tmp_path / "c.json"))
    assert candidate_scores(cached, "P1", ["e", "ee"]) == [None, None] and cached.failed == 2
    assert judge.first_error == "ValueError: cannot judge P1"


def test_eval_leaves_out_and_reports_prompts_the_judge_raised_on(models, tmp_path, capsys):
    from dpokit.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"P{i}"}) + "\n" for i in range(4)))
    common = ["eval", "--model", str(models["llm"]), "--ref-model", str(models["llm2"]), "--prompts", str(prompts),
              "--max-new-tokens", "3", "--output", str(tmp_path / "eval")]
    assert main(common + ["--judge", "helpers.judges:raises_on_p1"]) == 0
    out = capsys.readouterr().out
    assert "judge failures: 1 of 4 prompts, left out of the win rate; the first error: ValueError: cannot judge P1" in out
    report = json.loads((tmp_path / "eval" / "eval_report.json").read_text())
    assert report["judge_failures"] == 1 and report["wins"] + report["ties"] + report["losses"] == 3
    samples = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["judge"] is None for s in samples] == [False, True, False, False]
    assert main(common + ["--judge", "helpers.judges:always_raises"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the judge failed on every prompt" in err
    assert "the first error: ZeroDivisionError: division by zero" in err


def test_reward_model_scores_batched_deterministic_and_cached(models, tmp_path):
    judge = load_judge(f"rm:{models['rm1']}", batch_size=3)
    assert judge.pointwise and judge.identity.startswith("rm:")
    batched = judge.score("What is two plus two?", ANSWERS)
    one_by_one = [judge.score("What is two plus two?", [a])[0] for a in ANSWERS]
    assert batched == pytest.approx(one_by_one, abs=1e-5) and batched[0] == pytest.approx(batched[4], abs=1e-6)
    assert load_judge(f"rm:{models['rm1']}").score("What is two plus two?", ANSWERS) == pytest.approx(batched,
                                                                                                     abs=1e-5)
    # the score is the head's logit at the last token of the chat-rendered exchange
    tok, model = judge.tokenizer, judge.model
    text = tok.apply_chat_template([{"role": "user", "content": "What is two plus two?"},
                                    {"role": "assistant", "content": ANSWERS[1]}], tokenize=False)
    with torch.no_grad():
        direct = model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]
    assert batched[1] == pytest.approx(float(direct), abs=1e-5)

    cache = JudgeCache(tmp_path / "cache.json")
    cached = CachedJudge(judge, cache)
    first = cached.score("What is two plus two?", ANSWERS)
    assert first == pytest.approx(batched, abs=1e-5) and first[0] == first[4]
    assert (cache.misses, cache.hits) == (4, 1)  # the repeated answer is asked once
    judge.close()  # the cache answers without the model
    assert cached.score("What is two plus two?", ANSWERS) == first and cache.hits == 6 and judge.model is None


def test_a_causal_lm_is_not_a_reward_model(models):
    """Loaded as a classifier, a causal LM would get a random head: refused, not scored at random."""
    with pytest.raises(UserError, match="not a reward model"):
        load_judge(f"rm:{models['llm']}").score("q", ["a"])


def test_reward_model_two_labels_is_log_odds(models):
    judge = load_judge(f"rm:{models['rm2']}")
    score = judge.score("q", ["an answer"])[0]
    text = judge.tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "an answer"}], tokenize=False)
    with torch.no_grad():
        z = judge.model(**judge.tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0]
    p_good = torch.softmax(z, -1)[1]
    assert score == pytest.approx(float(torch.log(p_good / (1 - p_good))), abs=1e-5)
    # z_last − log(e^0 + e^2)
    assert reward_from_logits(torch.tensor([[0.0, 2.0, 1.0]]))[0] == pytest.approx(1 - math.log(1 + math.e ** 2))


def test_expected_score_arithmetic():
    """p("1") = 0.4 of which p("0"|"1") = 0.25 -> p(1) = 0.3, p(10) = 0.1; p("5") = 0.2: mass 0.6,
    E = (1·0.3 + 10·0.1 + 5·0.2) / 0.6 = 2.3 / 0.6."""
    value, mass = expected_score({"1": 0.4, "5": 0.2}, 0.25)
    assert mass == pytest.approx(0.6) and value == pytest.approx(2.3 / 0.6)
    assert expected_score({"1": 0.0}, 0.5) == (None, 0.0)
    assert preference(0.3, 0.1) == pytest.approx(0.75) and preference(0.0, 0.0) is None


def test_llm_judge_expected_score_and_both_orders(models):
    judge = load_judge(f"llm:{models['llm']}", batch_size=2)
    scores = judge.score("What is two plus two?", ANSWERS)
    assert all(1.0 <= s <= 10.0 for s in scores) and judge.stats["failures"] == 0
    one = judge.score("What is two plus two?", [ANSWERS[1]])[0]
    assert one == pytest.approx(scores[1], abs=1e-5)  # left padding changes nothing
    assert 0 < judge.stats["valid_mass"] / judge.stats["judgements"] < 1

    pairwise = load_judge(f"llm:{models['llm']}", mode="pairwise")
    assert not pairwise.pointwise and pairwise.identity != judge.identity
    a, b = ANSWERS[0], ANSWERS[1]
    ab, ba = both_orders(pairwise, "What is two plus two?", [(a, b), (b, a)])
    assert ab + ba == pytest.approx(1.0, abs=1e-9) and 0 < ab < 1
    single = pairwise.compare("What is two plus two?", [(a, b), (b, a)])
    assert ab == pytest.approx((single[0] + 1 - single[1]) / 2)
    round_robin = candidate_scores(pairwise, "What is two plus two?", ANSWERS[:3])
    assert sum(round_robin) == pytest.approx(1.5)  # each pair's two wins sum to 1: 3 pairs over 2 games each


def test_llm_rubric_file_changes_identity_and_errors(models, tmp_path):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Score the response from 1 to 10 for brevity. Answer with the number only.")
    default = load_judge(f"llm:{models['llm']}")
    custom = load_judge(f"llm:{models['llm']}", rubric=str(rubric))
    assert custom.identity != default.identity and custom.rubric.startswith("Score the response")
    assert 1 <= custom.score("q", ["a"])[0] <= 10
    with pytest.raises(UserError, match="online.judge_rubric"):
        load_judge(f"llm:{models['llm']}", rubric=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="online.judge_rubric"):
        OnlineSettings(prompts="p", judge="self", judge_rubric=str(tmp_path / "missing.txt")).judge_checks()
    with pytest.raises(UserError, match="not found"):
        OnlineSettings(prompts="p", judge=f"rm:{tmp_path / 'nothing'}").judge_checks()
    with pytest.raises(UserError, match="online.judge_mode"):
        OnlineSettings(prompts="p", judge="helpers.judges:count_e", judge_mode="pairwise").judge_checks()
    with pytest.raises(UserError, match="online.judge_rubric"):
        OnlineSettings(prompts="p", judge=f"rm:{models['rm1']}", judge_rubric=str(rubric)).judge_checks()


def test_self_judge_is_the_rounds_policy_with_its_own_cache_entries(models, tmp_path):
    """Two rounds start from different policies: the self-judge of each has its own identity, so the
    second round's judgements are new cache entries, not the first round's reused."""
    settings = OnlineSettings(prompts="p", judge="self", generation_batch_size=4)
    judges = RunJudges(settings, str(models["llm"]), tmp_path / "cache.json")
    first, second = judges.for_round(str(models["llm"])), judges.for_round(str(models["llm2"]))
    assert first.identity.startswith("self:") and first.identity != second.identity
    s1 = candidate_scores(first, "q", ANSWERS[:3])
    assert judges.cache.misses == 3
    s2 = candidate_scores(second, "q", ANSWERS[:3])
    assert judges.cache.misses == 6 and len(judges.cache.values) == 6 and s1 != s2
    assert judges.for_eval().identity == first.identity  # evaluation: the initial model judges every round
    candidate_scores(judges.for_round(str(models["llm"])), "q", ANSWERS[:3])
    assert judges.cache.hits == 3
    judges.cache.save()
    assert len(json.loads((tmp_path / "cache.json").read_text())) == 6


def test_self_rewarding_online_rounds(tmp_path):
    """``--judge self`` over two rounds: round 2 is judged by round 1's policy, under another identity."""
    from helpers.data import read_jsonl
    from helpers.online import tiny_online

    out = tmp_path / "self"
    result = tiny_online(tmp_path, out, online__judge="self", online__rounds=2, online__samples_per_prompt=3,
                         online__max_new_tokens=6)
    stats = [json.loads((out / f"round-{r}" / "sampling.json").read_text()) for r in (1, 2)]
    assert stats[0]["judge"]["identity"] != stats[1]["judge"]["identity"]
    assert all(s["judge"]["identity"].startswith("self:") and s["judge"]["failures"] == 0 for s in stats)
    assert stats[1]["judge"]["cache_hits"] == 0  # nothing of round 1's judge is reused
    cands = read_jsonl(out / "round-2" / "candidates.jsonl")
    assert all(1 <= s <= 10 for c in cands for s in c["scores"])
    assert [e["round"] for e in result.rounds] == [1, 2] and all("mean_score_policy" in e for e in result.rounds)


def test_eval_with_model_judges(models, tmp_path):
    """``dpokit eval`` takes the same specs: a reward model's mean scores; ``self`` (the model
    evaluated) scoring 1–10; and an LLM judge passed in, pairwise, asked in both orders."""
    from dpokit.config import EvalConfig
    from dpokit.eval import evaluate_models
    from helpers.online import write_prompts

    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    base = {"model": str(models["llm"]), "ref_model": str(models["llm2"]), "prompts": str(prompts),
            "max_new_tokens": 6, "batch_size": 4, "max_length": 48, "max_prompt_length": 24}
    report = evaluate_models(EvalConfig(judge=f"rm:{models['rm1']}", **base).validate())
    assert report["judge_failures"] == 0 and report["wins"] + report["ties"] + report["losses"] == 3
    assert {"mean_score_policy", "mean_score_reference"} <= report.keys()
    self_judged = evaluate_models(EvalConfig(judge="self", **base).validate())
    assert 1 <= self_judged["mean_score_policy"] <= 10 and 1 <= self_judged["mean_score_reference"] <= 10
    pairwise = load_judge(f"llm:{models['llm']}", mode="pairwise")
    evaluate_models(EvalConfig(judge="(passed in)", output=str(tmp_path / "e"), **base).validate(), judge=pairwise)
    outcomes = [json.loads(line)["judge"] for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert all(0 < o < 1 for o in outcomes) and pairwise.stats["judgements"] == 6  # 3 prompts × 2 orders


def test_failed_judgements_are_left_out_and_reported(tmp_path):
    from helpers.data import read_jsonl
    from helpers.online import tiny_online

    out = tmp_path / "fail"
    entry = tiny_online(tmp_path, out, online__judge="helpers.judges:count_e_or_nan", online__pairing="all").rounds[0]
    cands = read_jsonl(out / "round-1" / "candidates.jsonl")
    failed = sum(s is None for c in cands for s in c["scores"])
    assert entry["judge_failures"] == failed > 0
    assert all(s is None or s % 2 == 0 for c in cands for s in c["scores"])
    pairs = read_jsonl(out / "round-1" / "pairs.jsonl")
    assert pairs and all(p["score_chosen"] is not None and p["score_rejected"] is not None for p in pairs)
    assert json.loads((out / "round-1" / "sampling.json").read_text())["judge"]["failed_judgements"] == failed
