"""Evidence: preference losses compared on the click simulator at equal data (one logged log of the
softmax logger), each training a fresh item_ranker from the same random start (the reference),
scored by the simulator's exact values of its greedy slates and by IPS on a second, held-out log.

Training records come from the same log: clicked-over-shown pairs (``sigmoid`` = DPO, ``cpo`` with
β 1 and no NLL term = BPR, reference-free) or lists of the clicked item and 2 unclicked shown items
(``softmax_dpo`` = S-DPO, ``plackett_luce``, ``lipo`` = LambdaRank-style λ-weighted pairs), IPS-
weighted (1/propensity of the click, clipped at 20). The pointwise baseline (BCE) is a small
loop of its own here, as the item_ranker policy takes pairs and lists only: logistic regression of
every shown item's click on its score plus a learnt bias per position (so that the position's
examination is not learnt as the item's appeal), unweighted, with the same steps, batch and lr. KL: the mean over users of KL(π ‖ π_ref) of
the softmax over all items (the first position's distribution).

    PYTHONPATH=. python examples/rank_compare.py [OUT_DIR]   (default: runs/rank_compare)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from dpokit.config import SimulateConfig, load_config
from dpokit.policies.ranker import context_features, load_ranker, write_ranker
from dpokit.rank.logs import off_policy_data, read_log, training_records, write_jsonl
from dpokit.rank.ope import estimate
from dpokit.rank.simulate import SlatePolicy, World, ranker_scorer
from dpokit.train import train

LOSSES = [("DPO", "sigmoid", "pairs", {"train.ref": "copy"}),
          ("BPR", "cpo", "pairs", {"loss.cpo_alpha": 0.0, "train.ref": "none"}),
          ("S-DPO", "softmax_dpo", "lists", {"train.ref": "copy"}),
          ("Plackett-Luce", "plackett_luce", "lists", {"train.ref": "copy"}),
          ("LiPO-λ", "lipo", "lists", {"train.ref": "copy"})]
STEPS, BATCH = 400, 32


def kl_to(scorer, ref_scorer, contexts) -> float:
    def logsoftmax(s):
        s = s - s.max(1, keepdims=True)
        return s - np.log(np.exp(s).sum(1, keepdims=True))
    lp, lq = logsoftmax(scorer(contexts)), logsoftmax(ref_scorer(contexts))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def train_pointwise(start: Path, logged, out: Path, seed: int = 0) -> Path:
    """BCE of click on score(x, a) + bias(position), AdamW, STEPS steps of BATCH shown items."""
    torch.manual_seed(seed)
    module = load_ranker(str(start))
    rows = {str(item["id"]): i for i, item in enumerate(module.items)}
    position_bias = torch.nn.Parameter(torch.zeros(max(r.position for r in logged)))
    opt = torch.optim.AdamW([*module.parameters(), position_bias], lr=0.05)
    order = torch.randperm(len(logged)).tolist()
    for step in range(STEPS):
        batch = [logged[i] for i in order[step * BATCH % len(order):][:BATCH]] or [logged[0]]
        numeric, categorical = context_features(module, [r.context for r in batch], "log")
        items = torch.tensor([rows[r.item] for r in batch])
        logits = module(numeric, categorical, items) + position_bias[torch.tensor([r.position - 1 for r in batch])]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([float(r.click) for r in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.save_pretrained(out)
    return out


def main(out: Path) -> None:
    world = World(SimulateConfig(users=200, items=30, seed=7).validate())
    log = write_jsonl(out / "log.jsonl", world.sample_log(20000, seed=1))
    logged = read_log(log, world.item_ids)
    # the estimates read a second log: on the training log itself a ranker that learnt its clicks
    # looks better than it is (measured: IPS above the true value, outside its interval)
    held = read_log(write_jsonl(out / "held.jsonl", world.sample_log(20000, seed=2)), world.item_ids)
    data = {mode: write_jsonl(out / f"{mode}.jsonl", training_records(logged, mode, negatives=2, clip=20.0)[0])
            for mode in ("pairs", "lists")}
    start = write_ranker(out / "start", world.item_table(), buckets=2048, dim=8, seed=0, **world.ranker_columns())
    contexts = [world.context(u) for u in range(world.cfg.users)]
    ref = ranker_scorer(start, world.item_ids)
    print(f"world: {world.cfg.users} users, {world.cfg.items} items, slates of 3, pbm clicks; log: 20000 slates "
          f"(60000 records); {sum(1 for _ in open(data['pairs']))} pairs, {sum(1 for _ in open(data['lists']))} lists")
    print(f"{'':14s} {'click rate':>10s} {'NDCG@3':>7s} {'HR@3':>6s} {'KL(π‖ref)':>9s}  IPS estimate [95% CI]   train s")
    rows = [("logger", world.true_values(world.logger()), None, None, 0.0),
            ("start (ref)", world.true_values(SlatePolicy(ref)), 0.0, off_policy_data(held, SlatePolicy(ref), world.item_ids),
             0.0)]
    for name, loss, mode, extra in LOSSES:
        began = time.perf_counter()
        cfg = load_config(None, {"model.policy": "item_ranker", "model.path": str(start), "data.train": str(data[mode]),
                                 "loss.name": loss, "loss.beta": 1.0, "train.lr": 0.05, "train.optimizer": "adamw",
                                 "train.scheduler": "constant", "train.batch_size": BATCH, "train.max_steps": STEPS,
                                 "train.output": str(out / loss), "train.progress": False, "train.registry": "",
                                 **extra})
        final = train(cfg, log=lambda *_: None).final
        took = time.perf_counter() - began
        scorer = ranker_scorer(final, world.item_ids)
        rows.append((name, world.true_values(SlatePolicy(scorer)), kl_to(scorer, ref, contexts),
                     off_policy_data(held, SlatePolicy(scorer), world.item_ids), took))
    began = time.perf_counter()
    final = train_pointwise(start, logged, out / "pointwise")
    scorer = ranker_scorer(final, world.item_ids)
    rows.append(("BCE pointwise", world.true_values(SlatePolicy(scorer)), kl_to(scorer, ref, contexts),
                 off_policy_data(held, SlatePolicy(scorer), world.item_ids), time.perf_counter() - began))
    for name, true, kl, arrays, took in rows:
        ips = "" if arrays is None else estimate(arrays)[0]
        ips = "" if not ips else f"{ips.value:.4f} [{ips.low:.4f}, {ips.high:.4f}]"
        kl_text = "" if kl is None else f"{kl:.3f}"
        print(f"{name:14s} {true['click_rate']:10.4f} {true['ndcg@3']:7.4f} {true['hr@3']:6.3f} {kl_text:>9s}  "
              f"{ips:24s} {took:5.1f}")


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/rank_compare")
    folder.mkdir(parents=True, exist_ok=True)
    main(folder)
