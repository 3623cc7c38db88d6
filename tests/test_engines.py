"""FSDP2 on two CPU processes (gloo) trains exactly like one process with the same global batch,
and its checkpoints resume exactly; engine mismatches are one-line errors.

accelerate 1.15 turns FSDP on only for GPU process groups; dpokit turns it on for CPU ones
(``engines._fsdp_on_cpu``), so this runs the real ``fully_shard`` path: sharded policy and
reference, log-probs through the wrapped forward, gathered weights and optimizer state.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import free_port, without_cpu_setting
from helpers import final_weights, metrics, tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
"""What ``accelerate launch --config_file examples/accelerate/fsdp.yaml`` puts in the environment."""


def dpo(args: list[str], processes: int, **env) -> subprocess.CompletedProcess:
    env = {**without_cpu_setting(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    launch = [sys.executable, "-m", "dpokit.cli"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}", "-m", "dpokit.cli"]
    return subprocess.run(launch + ["dpo", *args], capture_output=True, text=True, env=env, timeout=600)


def assert_same_run(one: Path, two: Path) -> None:
    m1, m2 = metrics(one), metrics(two)
    assert len(m1) == len(m2)
    for a, b in zip(m1, m2):
        for key in a:
            if key not in ("tokens_per_s", "step_s"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key
    w1, w2 = final_weights(one), final_weights(two)
    assert sorted(w1) == sorted(w2)  # the tied LM head is stored once, as one process stores it
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=0, msg=key)


@pytest.fixture()
def setup(tmp_path):
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=22)
    # 5 held-out pairs on 2 processes × batch 2: 2 batches on one process, 1 on the other, so
    # the evaluation and its precomputed reference run a stand-in batch (a sharded forward is a collective)
    held = write_pairs(tmp_path / "held.jsonl", n=5, seed=5)
    return tmp_path, ["--model", str(model), "--data", str(data), "--eval-data", str(held), "--loss", "sigmoid",
                      "--max-steps", "4", "--lr", "1e-3", "--max-length", "64", "--max-prompt-length", "32",
                      "--no-progress"]


@pytest.mark.parametrize("ref", ["copy", "precomputed"])
def test_fsdp_two_processes_match_one(setup, ref):
    """2 FSDP processes × batch 2 == 1 process × batch 4 (fp32, 1e-5): per-step loss and metrics,
    held-out evaluation, final weights. With ``precomputed`` the cache is computed through the
    sharded policy, half the records on each process; its key holds the batch layout (2 processes
    × 2), so the single process (1 × 4, other rounding) computes its own instead of reading it."""
    tmp, common = setup
    common += ["--ref", ref, "--cache-dir", str(tmp / "cache")]
    done = dpo(common + ["--output", str(tmp / "fsdp"), "--batch-size", "2"], 2, **FSDP_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[engine] fsdp on 2 processes (cpu)" in done.stdout
    cached = sorted(p.name for p in (tmp / "cache").iterdir()) if ref == "precomputed" else []
    shutil.rmtree(tmp / "cache", ignore_errors=True)  # the single process computes its own
    done = dpo(common + ["--output", str(tmp / "one"), "--batch-size", "4"], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp / "one", tmp / "fsdp")
    if ref == "precomputed":
        single = sorted(p.name for p in (tmp / "cache").iterdir())
        assert len(cached) == len(single) == 2 and not set(cached) & set(single)  # train and eval each
    assert metrics(tmp / "one")[0]["loss"] != metrics(tmp / "one")[3]["loss"]  # it trained


def test_fsdp_checkpoint_resumes_exactly(setup):
    """A run saved at step 2 and resumed from that checkpoint alone ends with the same weights
    and step-3/4 metrics as the uninterrupted run; the checkpoint holds full weights and a full
    optimizer state, and a process group of another engine refuses it with a one-line error."""
    tmp, common = setup
    common += ["--ref", "copy", "--save-steps", "2", "--save-total-limit", "0"]
    full = dpo(common + ["--output", str(tmp / "full"), "--batch-size", "2"], 2, **FSDP_ENV)
    assert full.returncode == 0, full.stderr[-3000:]
    ckpt = tmp / "full" / "checkpoint-2"
    assert (ckpt / "optimizer_full.safetensors").is_file() and (ckpt / "model.safetensors").is_file()
    (tmp / "resumed").mkdir()
    shutil.copytree(ckpt, tmp / "resumed" / "checkpoint-2")
    resumed = dpo(common + ["--output", str(tmp / "resumed"), "--batch-size", "2", "--resume"], 2, **FSDP_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[resume] from" in resumed.stdout
    for key, value in final_weights(tmp / "full").items():
        torch.testing.assert_close(final_weights(tmp / "resumed")[key], value, atol=1e-6, rtol=0, msg=key)
    steps = {m["step"]: m for m in metrics(tmp / "full") if "loss" in m}
    for m in metrics(tmp / "resumed"):
        if "loss" in m:
            assert m["loss"] == pytest.approx(steps[m["step"]]["loss"], rel=1e-6), m["step"]

    (tmp / "other").mkdir()
    shutil.copytree(ckpt, tmp / "other" / "checkpoint-2")
    other = dpo(common + ["--output", str(tmp / "other"), "--batch-size", "4", "--resume"], 1)
    assert other.returncode == 2
    assert "saved under FSDP" in other.stderr and "Traceback" not in other.stderr


def test_fsdp1_is_refused(setup):
    tmp, common = setup
    done = dpo(common + ["--ref", "copy", "--output", str(tmp / "v1"), "--batch-size", "2"], 2,
               **{**FSDP_ENV, "FSDP_VERSION": "1"})
    assert done.returncode != 0
    assert "dpokit: error: accelerate config: field 'fsdp_version': dpokit runs FSDP as FSDP2" in done.stderr


def accelerate_launch(config: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**without_cpu_setting(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "examples" / "accelerate" / config), "--num_processes", "2",
              "--main_process_port", str(free_port()), "-m", "dpokit.cli", "dpo"]
    return subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("config,engine", [("cpu_2proc.yaml", "ddp"), ("fsdp.yaml", "fsdp")])
def test_shipped_accelerate_configs_run_two_cpu_processes(setup, config, engine):
    """``accelerate launch`` with a shipped config starts two CPU processes on the engine it names
    (no ACCELERATE_USE_CPU needed; ``--cpu`` would start one), and they train like one process."""
    tmp, common = setup
    common += ["--ref", "copy"]
    done = accelerate_launch(config, common + ["--output", str(tmp / "two"), "--batch-size", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"[engine] {engine} on 2 processes (cpu)" in done.stdout
    done = dpo(common + ["--output", str(tmp / "one"), "--batch-size", "4"], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp / "one", tmp / "two")


def test_fsdp_offload_on_cpu_processes_is_a_clear_error(setup):
    tmp, common = setup
    done = accelerate_launch("fsdp_offload.yaml", common + ["--output", str(tmp / "off"), "--batch-size", "2"])
    assert done.returncode != 0
    assert "dpokit: error: accelerate config: field 'fsdp_offload_params': FSDP CPU offload needs GPUs" in done.stderr


def test_fsdp_guard_rollback_matches_one_process(setup):
    """A guard rollback reloads the last checkpoint into the shards (after evaluation forward
    passes left the embedding/LM-head group unsharded) and carries on as one process does:
    the KL limit trips at step 2, both roll back to checkpoint-1 with a halved learning rate,
    trip again and stop at guard.max_rollbacks with the same metrics logged."""
    tmp, common = setup
    common += ["--ref", "copy", "--lr", "1e-2", "--save-steps", "1", "--eval-steps", "1", "--guard-max-kl", "0.05",
               "--guard-max-rollbacks", "1"]
    two = dpo(common + ["--output", str(tmp / "two"), "--batch-size", "2"], 2, **FSDP_ENV)
    one = dpo(common + ["--output", str(tmp / "one"), "--batch-size", "4"], 1)
    assert one.returncode == 2 and two.returncode != 0
    assert "after 1 rollbacks (guard.max_rollbacks)" in one.stderr and "after 1 rollbacks" in two.stderr
    m1, m2 = metrics(tmp / "one"), metrics(tmp / "two")
    assert [m.get("event") for m in m2] == [m.get("event") for m in m1] and any(m.get("event") for m in m1)
    for a, b in zip(m1, m2):
        for key, value in a.items():
            if isinstance(value, float) and key not in ("tokens_per_s", "step_s"):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
