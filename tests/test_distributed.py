"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import final_weights, metrics, tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_cpu_setting() -> dict[str, str]:
    """This environment without ACCELERATE_USE_CPU: CPU processes need no setting of the user's."""
    return {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}


def dpo(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**without_cpu_setting(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "dpokit.cli"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}", "-m", "dpokit.cli"]
    return subprocess.run(launch + ["dpo", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has GPUs: the processes would use them")
def test_cpu_processes_join_without_settings(tmp_path):
    """Without GPUs and without ACCELERATE_USE_CPU in the environment, two torchrun processes train
    as one group on the CPU, not as two lone copies (``accelerate launch``, which sets the variable
    to false, is run the same way by test_engines.py)."""
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=8)
    done = dpo(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "2",
                "--batch-size", "2", "--max-length", "48", "--max-prompt-length", "24", "--no-progress"], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[engine] ddp on 2 processes (cpu)" in done.stdout
    assert len(metrics(tmp_path / "run")) == 2


@pytest.mark.parametrize("ref,loss", [("copy", "sigmoid"), ("precomputed", "sigmoid"), ("copy", "kto")])
def test_two_processes_match_one(tmp_path, ref, loss):
    """2 processes × batch 2 == 1 process × batch 4: per-step loss and metrics, the held-out
    evaluation, and the final weights agree to 1e-5 (fp32); with the precomputed reference the
    cache is computed half by each process. KTO's z0, a statistic of the batch, is taken over
    the global batch, so it too matches (its held-out evaluation is per shard and not compared)."""
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=22)
    held = write_pairs(tmp_path / "held.jsonl", n=7, seed=5)
    evaluation = ["--eval-data", str(held)] if loss != "kto" else []
    common = ["--model", str(model), "--data", str(data), *evaluation, "--loss", loss, "--ref", ref,
              "--max-steps", "4", "--lr", "1e-3", "--max-length", "64", "--max-prompt-length", "32",
              "--no-progress", "--cache-dir", str(tmp_path / f"cache-{ref}")]
    runs = {}
    for processes, batch in ((2, 2), (1, 4)):
        out = tmp_path / f"run-{processes}"
        done = dpo(common + ["--output", str(out), "--batch-size", str(batch)], processes)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = (metrics(out), final_weights(out))
    (m2, w2), (m1, w1) = runs[2], runs[1]
    assert len(m1) == len(m2) == (5 if evaluation else 4)  # 4 steps (+ the final evaluation)
    for a, b in zip(m1, m2):
        for key in a:
            if key not in ("tokens_per_s", "step_s"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key
    assert not evaluation or "eval/rewards/accuracies" in m2[-1]
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=0, msg=key)
    assert m1[0]["loss"] != m1[3]["loss"]  # it trained
