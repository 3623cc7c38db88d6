"""The update loop on a stream of daily feedback whose preference drifts (dpokit.tasks.drift):
days 1-2 prefer more letters ``e`` (day 2's labels flipped on purpose), days 3-4 more letters ``a``.
The updates track the drift, the flipped day is refused, and a broken version promoted by hand is
rolled back by ``versions check``."""

from __future__ import annotations

from dpokit.policies.lm.tiny import write_tiny_model
from dpokit.tasks.drift import stream

SETTINGS = {"train.max_steps": 24, "train.lr": 2e-3, "train.batch_size": 8, "train.progress": False,
            "update.max_new_tokens": 12, "update.acc_drop": 0.2, "data.max_length": 48, "data.max_prompt_length": 16}


def test_updates_track_a_drifting_preference_and_refuse_or_roll_back_the_bad(tmp_path):
    model = write_tiny_model(tmp_path / "tiny", seed=0)
    result = stream(tmp_path / "stream", str(model), ["e", "e!", "a", "a"], SETTINGS, log=lambda *_: None)
    start, days, rollback = result["start"], result["days"], result["rollback"]
    assert days[0]["promoted"] and days[0]["score_e"] > start["score_e"]  # the first preference learnt
    assert not days[1]["promoted"] and days[1]["win_rate"] < 0.5  # flipped labels: the A/B test says worse
    assert days[1]["current"] == days[0]["current"]
    after_shift = [d for d in days[2:] if d["promoted"]]
    assert after_shift and days[-1]["score_a"] > days[1]["score_a"]  # the new preference learnt after the shift
    assert rollback["current_after"] == rollback["was_current"] and "loses to the previous version" in rollback["check"]
