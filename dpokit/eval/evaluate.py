"""``dpokit eval``: sample policy and reference on held-out prompts, judge, and estimate KL.

- Win rate: mean over prompts of the judge's P(policy answer beats reference answer), ties
  0.5, with a 95% percentile-bootstrap interval over prompts. A pairwise judge is asked in both
  orders; prompts whose judgement failed (a function that raised, or returned no finite number)
  are left out and counted (``judge_failures``), as online rounds count them; only a judge that
  fails on every prompt is an error.
- Sampled KL(π‖π_ref): mean over answers y ~ π(·|x) of log π(y|x) − log π_ref(y|x), unbiased
  when sampling π itself (temperature 1, top-p 1), with its standard error.
- With ``pairs``: reward accuracy and margins of the implicit reward β·log π/π_ref.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import torch
from accelerate import Accelerator

from dpokit.config import EvalConfig, LossConfig
from dpokit.data import encode_prompt, iter_json_objects, read_records, tokenize_records
from dpokit.data.readers import text_field
from dpokit.data.tokenize import collate
from dpokit.errors import UserError
from dpokit.eval.judges import both_orders, load_judge, score_outcome
from dpokit.losses import get_loss
from dpokit.policies.lm.load import disable_dropout, load_model, load_tokenizer
from dpokit.policies.lm.logprobs import completion_logps
from dpokit.policies.lm.policy import CausalLM
from dpokit.policies.reference import CopyReference
from dpokit.precision import resolve as resolve_precision
from dpokit.store.atomic import write_text_atomic
from dpokit.train.objective import dataset_metrics


def read_prompts(path: str, limit: int):
    prompts = [(text_field(obj, "prompt", where), where) for where, obj in iter_json_objects(path)]
    return prompts[:limit] if limit > 0 else prompts


def prompt_text(prompt) -> str:
    """What the judge sees: the prompt string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


@torch.no_grad()
def sequence_logps(model, prompt_ids: list[list[int]], answers: list[list[int]], pad_id: int,
                   batch_size: int, autocast) -> list[float]:
    """log π(y|x) summed over answer tokens, for each (prompt, answer)."""
    from dpokit.data.tokenize import TokenizedRecord

    records = [TokenizedRecord(p, [a], "") for p, a in zip(prompt_ids, answers)]
    out: list[float] = []
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(records[start:start + batch_size], pad_id).items()}
        with autocast():
            out += completion_logps(model, batch, 1).sum[0].tolist()
    return out


def win_rate(outcomes: list[float], seed: int) -> dict:
    lo, hi = bootstrap_ci(outcomes, seed=seed)
    return {"win_rate": sum(outcomes) / len(outcomes), "win_rate_ci95": [lo, hi],
            "wins": sum(o > 0.5 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o < 0.5 for o in outcomes)}


def evaluate_models(cfg: EvalConfig, policy=None, reference=None, tokenizer=None, judge=None) -> dict:
    """The whole evaluation; models (and the judge, e.g. a cached one) may be passed in to avoid reloading them."""
    accelerator = Accelerator()
    autocast = eval_autocast(cfg, accelerator)
    tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code)
    policy = policy or load_model(cfg.model, cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    reference = reference or load_model(cfg.ref_model, cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    for m in (policy, reference):
        disable_dropout(m)
        m.to(accelerator.device).eval()
    judge = judge or load_judge(cfg.judge, self_model=cfg.model, batch_size=cfg.batch_size, dtype=cfg.dtype,
                                trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    prompts = read_prompts(cfg.prompts, cfg.num_prompts)
    if not prompts:
        raise UserError("no prompts", where=cfg.prompts)
    prompt_ids = [encode_prompt(tokenizer, p, where)[-cfg.max_prompt_length:] for p, where in prompts]
    policy_answers, policy_logps = sample_answers(cfg, policy, tokenizer, prompt_ids, autocast, with_logps=True)
    gen = {"policy": policy_answers, "reference": sample_answers(cfg, reference, tokenizer, prompt_ids, autocast)}
    texts = {k: decode(tokenizer, v) for k, v in gen.items()}
    judged, scores = judge_answers(judge, [prompt_text(p) for p, _ in prompts], texts["policy"], texts["reference"])
    outcomes = [o for o in judged if o is not None]
    first_error = getattr(judge, "first_error", None)
    if not outcomes:
        cause = f"; the first error: {first_error}" if first_error else ""
        raise UserError(f"the judge failed on every prompt (see docs/online.md, judges){cause}", where=cfg.judge)
    report = {
        "prompts": len(prompts), **win_rate(outcomes, cfg.seed), "judge_failures": len(judged) - len(outcomes),
        **({"judge_first_error": first_error} if first_error else {}),
        **sampled_kl(policy, reference, prompt_ids, gen["policy"], tokenizer.pad_token_id, cfg.batch_size, autocast,
                     policy_logps),
        "mean_length_policy": statistics.fmean(map(len, gen["policy"])),
        "mean_length_reference": statistics.fmean(map(len, gen["reference"])),
    }
    for name, values in scores.items():
        valid = [v for v in values if v is not None]
        report[f"mean_score_{name}"] = statistics.fmean(valid) if valid else None
    if cfg.pairs:
        report.update(pair_metrics(cfg, policy, reference, tokenizer, autocast, accelerator))
    if cfg.output:
        scored = {f"score_{name}": values for name, values in scores.items()}  # a pointwise judge's scores
        write_report(Path(cfg.output), report, prompts, {**texts, "judge": judged, **scored})
    return report


def eval_autocast(cfg: EvalConfig, accelerator):
    """The autocast factory of ``cfg.dtype`` on this device, after one line saying what was picked."""
    precision = resolve_precision(cfg.dtype, accelerator.device.type)
    print(f"[precision] {precision.name}: {precision.reason}")
    return precision.autocast(accelerator.device)


def sample_answers(cfg: EvalConfig, model, tokenizer, prompt_ids: list[list[int]], autocast, with_logps: bool = False):
    """One answer per prompt (token ids) under the evaluation's sampling settings; every model
    compared on the same prompts draws with the same seed. ``with_logps``: (answers, their log π)."""
    with autocast():
        return CausalLM(tokenizer).sample(model, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                          cfg.batch_size, cfg.seed, with_logps)


def decode(tokenizer, answers: list[list[int]]) -> list[str]:
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]


def sampled_kl(policy, reference, prompt_ids: list[list[int]], answers: list[list[int]], pad_id: int,
               batch_size: int, autocast, policy_logps: list[float] | None = None) -> dict:
    """KL(π‖π_ref) from the policy's own samples ``answers``: the mean of log π(y|x) − log π_ref(y|x),
    with its standard error. ``policy_logps``: log π of the answers as sampling gave them, which
    saves scoring them again with the policy."""
    if policy_logps is None:
        policy_logps = sequence_logps(policy, prompt_ids, answers, pad_id, batch_size, autocast)
    return kl_from_logps(policy_logps, sequence_logps(reference, prompt_ids, answers, pad_id, batch_size, autocast))


def kl_from_logps(policy: list[float], reference: list[float]) -> dict:
    """The sampled KL and its standard error from log π(y|x) and log π_ref(y|x) of the policy's samples."""
    diffs = [a - b for a, b in zip(policy, reference)]
    return {"kl_sampled": statistics.fmean(diffs),
            "kl_sampled_stderr": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0}


def judge_answers(judge, prompts: list[str], policy: list[str], reference: list[str]) -> tuple[list, dict]:
    """(P(policy answer beats reference answer) or None per prompt, and for a pointwise judge each
    side's scores); a pointwise judge scores both answers in one call, a pairwise one is asked in both orders."""
    if not judge.pointwise:
        return [both_orders(judge, p, [(a, b)])[0] for p, a, b in zip(prompts, policy, reference)], {}
    pairs = [judge.score(p, [a, b]) for p, a, b in zip(prompts, policy, reference)]
    judged = [score_outcome(sa, sb) for sa, sb in pairs]
    return judged, {"policy": [sa for sa, _ in pairs], "reference": [sb for _, sb in pairs]}


def pair_metrics(cfg: EvalConfig, policy, reference, tokenizer, autocast, accelerator) -> dict:
    """Reward accuracy and margins of β·log π/π_ref on held-out pairs (same code as training);
    with several files (``a.jsonl,b.jsonl``), over all of them and for each (``by_source``)."""
    from dpokit.data.mix import parse_spec

    spec, loss = get_loss("sigmoid"), LossConfig(beta=cfg.beta)
    loss.resolve_defaults(spec.defaults)
    kind, parts = CausalLM(tokenizer), {}
    for source in parse_spec(cfg.pairs, "pairs"):
        parts[source.label], _ = tokenize_records(read_records(source.path, "pair"), tokenizer, cfg.max_length,
                                                  cfg.max_prompt_length)

    def measure(records: list) -> dict:
        m = dataset_metrics(spec, loss, cfg.batch_size, kind, policy, CopyReference(reference, kind, autocast), records,
                            autocast, accelerator)
        return {"pairs": len(records), "reward_accuracy": m["rewards/accuracies"],
                "reward_margin": m["rewards/margins"], "dpo_loss": m["loss"]}

    report = measure([r for records in parts.values() for r in records])
    if len(parts) > 1:
        report["by_source"] = {label: measure(records) for label, records in parts.items()}
    return report


def write_report(folder: Path, report: dict, prompts, columns: dict[str, list]) -> None:
    """``samples.jsonl`` (each prompt with one value per column: answers, the judge's outcome
    P(policy beats reference) and, from a judge that scores answers, each answer's score),
    then ``eval_report.json``, each written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"source": where, "prompt": prompt_text(p), **{k: v[i] for k, v in columns.items()}},
                        ensure_ascii=False) + "\n" for i, (p, where) in enumerate(prompts)]
    write_text_atomic(folder / "samples.jsonl", "".join(lines))
    write_text_atomic(folder / "eval_report.json", json.dumps(report, indent=2))
