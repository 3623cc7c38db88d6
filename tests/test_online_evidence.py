"""Evidence for online rounds: on the tiny model, with a rule the initial model rarely satisfies and
a graded judge (``helpers.judges:count_k``), 3 online rounds of 8 prompts reach a higher judge win
rate over the initial model than one offline round on the same number of pairs sampled from the
initial model, with the same epochs and hyperparameters (tests/helpers/evidence.py lists what the
arms share).

Why online should win here: the initial model's answers hold about 0.2 ``k`` each, so its pairs
are mostly "one ``k`` against none" and say little about which further tokens add more. Online
rounds sample the policy that has moved: by round 3 its answers hold several ``k``, and the pairs
keep teaching where it now puts its mass. The margin is asserted in the mean over seeds and in a
majority of them, against one offline round and against the control ``offline-rounds``: the same
3 rounds, each sampling the initial model. Beating the control shows that the gain comes from
sampling the policy being trained, not from training in rounds.

benchmarks/online_vs_offline.py runs the same comparison over more seeds and arms (docs/online.md).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from dpokit.policies.lm.tiny import write_tiny_model
from helpers.evidence import Budget, run_arms, summary

SEEDS = (0, 1, 2)
MIN_MEAN_MARGIN = 0.1


@pytest.fixture
def one_thread():
    """The tiny model's matmuls are too small to gain from threads, and on a shared 2-core machine
    two threads spin against other jobs (130 s for this test against 35 s on one); one thread also
    keeps the sums, and so the samples, the same on any core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_three_online_rounds_beat_one_offline_round_on_the_same_pairs(tmp_path, one_thread):
    budget = Budget()
    rows = []
    for seed in SEEDS:
        model = str(write_tiny_model(tmp_path / f"model-{seed}", seed=seed))
        runs = run_arms(model, tmp_path / f"seed-{seed}", budget, seed, ("online", "offline", "offline-rounds"))
        rows.append({arm: summary(entries) for arm, entries in runs.items()})
    report = "\n".join(f"seed {seed}: " + ", ".join(
        f"{arm} {s['win_rate']:.3f} ({s['pairs']} pairs, {s['steps']} steps, score {s['score']:.2f})"
        for arm, s in row.items()) for seed, row in zip(SEEDS, rows))
    print(report)  # the measured figures, shown with pytest -s
    for row in rows:
        on = row["online"]
        for arm in ("offline", "offline-rounds"):
            # The same budget: online must not win by training on more pairs or for more steps (a round
            # whose pairs are not a multiple of the batch adds a partial step per epoch; the control's
            # per-round budget is rounded).
            assert abs(on["pairs"] - row[arm]["pairs"]) <= (0 if arm == "offline" else 1), report
            assert on["steps"] - row[arm]["steps"] <= budget.epochs * (budget.rounds - 1), report
    for arm in ("offline", "offline-rounds"):
        margins = [row["online"]["win_rate"] - row[arm]["win_rate"] for row in rows]
        assert statistics.fmean(margins) >= MIN_MEAN_MARGIN, (arm, report)
        assert sum(m > 0 for m in margins) > len(SEEDS) / 2, (arm, report)
        # The win rate counts ties as half; the judge's mean score must rise with it, not only the ties shift.
        assert statistics.fmean(row["online"]["score"] - row[arm]["score"] for row in rows) > 0, (arm, report)
