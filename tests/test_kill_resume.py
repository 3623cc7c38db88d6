"""Exact resume: a CLI run killed with SIGKILL at random moments (during start-up, between steps,
while a checkpoint is being written, while final/ is being written) and run again with --resume
each time ends with weights bitwise equal to an uninterrupted run, and a clean run folder."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dpokit.store.atomic import TEST_PAUSE, verify
from dpokit.train import train
from helpers import config, final_weights, metrics, tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def launch(args: list[str], pause: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TEST_PAUSE, None)
    if pause is not None:
        env[TEST_PAUSE] = str(pause)  # sleep inside each atomic write, so a kill can land there
    return subprocess.Popen([sys.executable, "-m", "dpokit.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def kill_when(proc: subprocess.Popen, ready, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    rng = random.Random(6)
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=16)
    expected = final_weights(train(config(model, data, tmp_path / "uninterrupted", train__max_steps=STEPS,
                                          train__save_steps=1)).output)
    out = tmp_path / "killed"
    args = ["dpo", "--model", str(model), "--data", str(data), "--output", str(out), "--max-length", "64",
            "--max-prompt-length", "32", "--batch-size", "4", "--lr", "1e-3", "--max-steps", str(STEPS),
            "--save-steps", "1", "--no-progress"]
    exists = lambda name: lambda: (out / name).exists()  # noqa: E731

    def partial() -> bool:  # a checkpoint being written by this launch (not one an earlier kill left)
        return any(p.name.startswith(".checkpoint-") and p.stat().st_mtime >= started for p in out.glob(".*.tmp"))

    def fresh() -> bool:  # a checkpoint completed by this launch
        return any(p.stat().st_mtime >= started for p in out.glob("checkpoint-*"))
    # Each kill waits for a moment of this launch's progress, never for a wall-clock time alone, and
    # checkpoint writes are slowed (the test hook) so that a fast machine cannot finish the run
    # before the kill lands: at most one more step runs between the moment and the kill.
    kills = [  # (what the kill waits for, extra delay, pause inside atomic writes)
        (lambda: True, rng.uniform(0.2, 1.0), None),                      # start-up: imports, loading
        (fresh, rng.uniform(0, 0.2), 0.4),                                 # between or inside steps
        (partial, rng.uniform(0, 0.5), 1.0),                               # a checkpoint half-written
        (fresh, rng.uniform(0, 0.2), 0.4),
        (exists(".final.tmp"), rng.uniform(0, 0.5), 1.0),                 # final/ half-written
    ]
    seen = []
    for i, (ready, delay, pause) in enumerate(kills):
        started = time.time()
        proc = launch(args + (["--resume"] if i else []), pause)
        kill_when(proc, ready, delay)
        assert proc.returncode == -signal.SIGKILL
        seen.append(sorted(p.name for p in out.glob("*checkpoint-*")))
    # The partial-write kills did leave a partial folder behind (so the resume had to cope with it).
    assert not (out / "final").exists(), seen
    done = launch(args + ["--resume"])
    _, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr

    got = final_weights(out)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "weights differ from the uninterrupted run"
    assert verify(out / "final") is None
    assert [m["step"] for m in metrics(out) if "loss" in m] == list(range(1, STEPS + 1))
    assert not list(out.glob(".*.tmp")), "a partial write was left behind"
