"""Guards: non-finite steps skipped and counted, rollback with a lowered learning rate (kept across
resume), metric-collapse rollbacks, and SIGTERM / SIGINT saving a checkpoint that resumes exactly.

Non-finite losses are real: a test-only loss, registered here, is DPO except on chosen training
calls, where it multiplies the loss by NaN (so the loss and every gradient are NaN)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpokit.store.atomic import verify
from dpokit.errors import UserError
from dpokit.config.guard import GuardConfig
from dpokit.losses.base import _REGISTRY, register
from dpokit.losses.dpo import dpo_sigmoid
from dpokit.train import train
from dpokit.train.checkpoint import TrainState
from dpokit.train.guards import Action, Guard
from dpokit.train.optim import lr_factor
from helpers import config, final_weights, metrics, tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]
TRAP = {"calls": 0, "nan": set(), "signal": {}}
"""Training calls of the test loss so far; the calls (1-based) that return NaN; call -> signal to send."""


def trap_loss(policy, reference, cfg, ctx=None):
    """DPO, except that chosen training calls return NaN or send this process a signal (tests only)."""
    out = dpo_sigmoid(policy, reference, cfg)
    if ctx is not None and ctx.training:
        TRAP["calls"] += 1
        if TRAP["calls"] in TRAP["signal"]:
            os.kill(os.getpid(), TRAP["signal"][TRAP["calls"]])
        if TRAP["calls"] in TRAP["nan"]:
            out.losses = out.losses * float("nan")
    return out


@pytest.fixture(scope="module", autouse=True)
def trap_registered():
    """The test loss is in the registry only while this module runs (others list every loss)."""
    register("test_trap", needs_reference=True, input_kind="pair")(trap_loss)
    yield
    del _REGISTRY["test_trap"]


def arm(nan=(), signals=None) -> None:
    TRAP.update(calls=0, nan=set(nan), signal=dict(signals or {}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    return tmp, tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=16)


def run(setup, name, **overrides):
    tmp, model, data = setup
    base = dict(loss__name="test_trap", train__batch_size=2, train__scheduler="linear")
    return config(model, data, tmp / name, **{**base, **overrides})


def steps(out: Path) -> list[dict]:
    return [m for m in metrics(out) if "loss" in m]


def test_non_finite_steps_are_skipped_and_counted(setup):
    arm(nan={2, 4})
    result = train(run(setup, "skip", train__max_steps=4))
    assert result.steps == 4 and TRAP["calls"] == 6  # two steps skipped, four applied
    lines = steps(result.output)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert [m["guard/skipped_steps"] for m in lines] == [0, 1, 2, 2]
    # A skipped step leaves the schedule alone: the four applied steps follow it from step 0.
    assert [m["lr"] for m in lines] == pytest.approx([1e-3 * lr_factor(s, 0, 4, "linear") for s in range(4)])
    assert all(torch.isfinite(w).all() for w in final_weights(result.output).values())


def test_bad_steps_roll_back_with_a_lower_lr_that_survives_resume(setup):
    tmp = setup[0]
    arm(nan={3, 4, 5})  # steps 1 and 2 apply; the next three tries fail: back to checkpoint-2
    messages: list[str] = []
    cfg = run(setup, "rollback", train__max_steps=5, train__save_steps=1, train__save_total_limit=0)
    result = train(cfg, log=messages.append)
    out = result.output
    assert result.steps == 5
    events = [m for m in metrics(out) if m.get("event") == "rollback"]
    assert len(events) == 1 and events[0]["to_step"] == 2 and events[0]["lr_scale"] == 0.5, events
    assert "3 consecutive steps with a non-finite loss" in events[0]["reason"]
    assert any(m.startswith("[guard]") and "rolled back to checkpoint-2" in m for m in messages), messages
    after = [m for m in steps(out) if m["step"] > 2]
    assert [m["step"] for m in after] == [3, 4, 5]
    assert [m["lr"] for m in after] == pytest.approx([0.5e-3 * lr_factor(s, 0, 5, "linear") for s in (2, 3, 4)])
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["lr_scale"] == 0.5 and state["guard"] == {"skipped_steps": 3, "rollbacks": 1}
    # Resuming from checkpoint-3 keeps the lowered learning rate and ends bitwise equal.
    again = tmp / "rollback-resumed"
    shutil.copytree(out, again)
    shutil.rmtree(again / "final")
    shutil.rmtree(again / "checkpoint-4")
    arm()
    train(run(setup, "rollback-resumed", train__max_steps=5, train__save_steps=1, train__save_total_limit=0,
              train__resume=True))
    assert [m["lr"] for m in steps(again) if m["step"] > 3] == pytest.approx([m["lr"] for m in after[1:]])
    a, b = final_weights(out), final_weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_without_a_checkpoint_stops(setup):
    arm(nan={2, 3, 4})
    with pytest.raises(UserError, match="3 consecutive steps .* no checkpoint to roll back to"):
        train(run(setup, "no-ckpt", train__max_steps=4))


def test_kl_above_its_bound_rolls_back_until_max_rollbacks(setup):
    """Step 1 starts at the reference (KL 0); from step 2 the KL is above a tiny bound, so each try
    rolls back to checkpoint-1 with half the learning rate, until guard.max_rollbacks."""
    arm()
    cfg = run(setup, "kl", train__max_steps=4, train__save_steps=1, guard__max_kl=1e-12, guard__max_rollbacks=2)
    with pytest.raises(UserError, match=r"kl/approx .* above guard.max_kl .* after 2 rollbacks"):
        train(cfg)
    events = [m for m in metrics(Path(cfg.train.output)) if m.get("event") == "rollback"]
    assert [(e["step"], e["to_step"], e["lr_scale"]) for e in events] == [(2, 1, 0.5), (2, 1, 0.25)]


def test_accuracy_drop_is_measured_from_the_best():
    guard = Guard(GuardConfig(eval_accuracy_drop=0.2), TrainState())
    acc = "eval/rewards/accuracies"
    assert [guard.check_metrics({acc: a}) for a in (0.5, 0.8, 0.65, 0.61)] == [Action.OK] * 4
    assert guard.check_metrics({acc: 0.59}) is Action.ROLLBACK and "best 0.8" in guard.reason
    assert guard.check_metrics({"loss": float("nan")}) is Action.OK  # other metrics are not watched
    assert Guard(GuardConfig(enabled=False, max_kl=1.0), TrainState()).check_metrics({"kl/approx": 9}) is Action.OK


@pytest.mark.parametrize("key, value, needle", [
    ("guard.lr_factor", 0.0, "must be in (0, 1]"),
    ("guard.max_bad_steps", -1, "must be ≥ 0"),
    ("guard.eval_accuracy_drop", 0.1, "give --eval-data"),
    ("guard.max_kl", 0.5, "train.save_steps"),
])
def test_guard_settings_are_checked(setup, key, value, needle):
    with pytest.raises(UserError) as exc:
        run(setup, "unused", **{key.replace(".", "__"): value})
    assert needle in str(exc.value)


@pytest.fixture(scope="module")
def uninterrupted(setup):
    arm()
    return final_weights(train(run(setup, "full", train__max_steps=5)).output)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_is_exact(setup, uninterrupted, sig):
    """The signal arrives during step 3's forward pass: step 3 completes, checkpoint-3 is saved,
    the run stops; --resume then ends bitwise equal to an uninterrupted run."""
    tmp = setup[0]
    arm(signals={3: sig})
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stopped = train(run(setup, f"stopped-{sig.name}", train__max_steps=5))
    assert (stopped.stopped_by, stopped.steps, stopped.final) == (sig.name, 3, None)
    assert verify(stopped.checkpoint) is None and stopped.checkpoint.name == "checkpoint-3"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the previous handlers are back
    assert not (tmp / f"stopped-{sig.name}" / "final").exists()
    arm()
    resumed = train(run(setup, f"stopped-{sig.name}", train__max_steps=5, train__resume=True))
    assert resumed.stopped_by is None and resumed.steps == 5
    b = final_weights(resumed.output)
    assert all(torch.equal(uninterrupted[k], b[k]) for k in uninterrupted)


def test_cli_exits_143_on_sigterm_with_a_checkpoint(setup):
    tmp, model, data = setup
    out = tmp / "cli-term"
    args = [sys.executable, "-m", "dpokit.cli", "dpo", "--model", str(model), "--data", str(data), "--output",
            str(out), "--max-length", "64", "--max-prompt-length", "32", "--batch-size", "2", "--max-steps", "100000",
            "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM at step" in stderr and "--resume" in stderr
    step = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert step >= 2 and verify(out / f"checkpoint-{step}") is None
