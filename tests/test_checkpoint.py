"""Checkpoints: manifest and verification, falling back past a damaged checkpoint, retention,
and real write errors (file too large, not a directory) that leave the previous checkpoint valid."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpokit.store.atomic import MANIFEST, verify
from dpokit.config import TrainConfig
from dpokit.errors import UserError
from dpokit.policies.lm.tiny import tiny_model, tiny_tokenizer
from dpokit.train import train
from dpokit.policies.lm.policy import save_model
from dpokit.train.checkpoint import (TrainState, latest_checkpoint, load_checkpoint, prune_checkpoints,
                                     save_checkpoint)
from dpokit.train.optim import build_optimizer, build_scheduler
from helpers import config, final_weights, metrics, tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 4-step run, and the same run saving a checkpoint after every step."""
    tmp = tmp_path_factory.mktemp("ckpt")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=16)
    train(config(model, data, tmp / "full", train__max_steps=4))
    train(config(model, data, tmp / "saved", train__max_steps=4, train__save_steps=1, train__save_total_limit=0))
    return tmp, model, data


def test_checkpoint_has_manifest_and_verifies(runs):
    tmp, _, _ = runs
    ckpt = tmp / "saved" / "checkpoint-3"
    listed = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert set(listed) == {p.name for p in ckpt.iterdir()} - {MANIFEST}
    assert listed["model.safetensors"]["size"] == (ckpt / "model.safetensors").stat().st_size
    assert verify(ckpt) is None and verify(tmp / "saved" / "final") is None
    assert not [p for p in (tmp / "saved").iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert not list(ckpt.glob("*.pt"))  # optimizer, scheduler and RNG states are safetensors, not pickle


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _escape(ckpt: Path) -> None:
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["../../etc/passwd"] = {"size": 1, "sha256": "0"}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


DAMAGE = {
    "flipped byte": (lambda c: _flip_byte(c / "optimizer.safetensors"), "optimizer.safetensors does not match"),
    "truncated": (lambda c: os.truncate(c / "model.safetensors", 1000), "model.safetensors has 1000 bytes"),
    "missing file": (lambda c: (c / "rng.safetensors").unlink(), "rng.safetensors is missing"),
    "no manifest": (lambda c: (c / MANIFEST).unlink(), "no manifest.json"),
    "garbled manifest": (lambda c: (c / MANIFEST).write_text("{not json"), "manifest.json is unreadable"),
    "path outside": (_escape, "outside the folder"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_skipped_with_its_reason(runs, tmp_path, damage):
    tmp, _, _ = runs
    for step in (2, 3):
        shutil.copytree(tmp / "saved" / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    corrupt, reason = DAMAGE[damage]
    corrupt(tmp_path / "checkpoint-3")
    messages: list[str] = []
    assert latest_checkpoint(tmp_path, messages.append) == tmp_path / "checkpoint-2"
    assert len(messages) == 1 and "checkpoint-3" in messages[0] and reason in messages[0], messages


def test_resume_falls_back_past_a_damaged_checkpoint(runs):
    """checkpoint-3 is damaged: resuming starts from checkpoint-2 and still ends bitwise equal."""
    tmp, model, data = runs
    out = tmp / "fallback"
    shutil.copytree(tmp / "saved", out)
    shutil.rmtree(out / "final")
    _flip_byte(out / "checkpoint-3" / "model.safetensors")
    messages: list[str] = []
    result = train(config(model, data, out, train__max_steps=4, train__save_steps=1, train__save_total_limit=0,
                          train__resume=True), log=messages.append)
    assert result.steps == 4
    assert any("skipping" in m and "checkpoint-3" in m and "model.safetensors" in m for m in messages), messages
    assert any(m.startswith("[resume]") and "checkpoint-2" in m for m in messages), messages
    a, b = final_weights(tmp / "full"), final_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"


def _fake_checkpoints(folder: Path, losses: list[float]) -> None:
    for step, loss in enumerate(losses, start=1):
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "metrics.json").write_text(json.dumps({"loss": loss}))


def _kept(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


@pytest.mark.parametrize("mode, kept", [("min", [2, 5, 6]), ("max", [3, 5, 6])])
def test_retention_keeps_last_n_and_the_best(tmp_path, mode, kept):
    _fake_checkpoints(tmp_path, [0.5, 0.1, 0.9, float("nan"), 0.4, 0.3])  # NaN is never the best
    prune_checkpoints(tmp_path, TrainConfig(save_total_limit=2, save_best_metric="loss", save_best_mode=mode))
    assert _kept(tmp_path) == kept


def test_retention_ties_and_missing_metric(tmp_path):
    _fake_checkpoints(tmp_path, [0.2, 0.2, 0.9, 0.8])
    prune_checkpoints(tmp_path, TrainConfig(save_total_limit=1, save_best_metric="loss", save_best_mode="min"))
    assert _kept(tmp_path) == [1, 4]  # a tie goes to the earlier checkpoint
    prune_checkpoints(tmp_path, TrainConfig(save_total_limit=1, save_best_metric="eval/loss"))
    assert _kept(tmp_path) == [4]


def test_retention_in_a_run(runs):
    """Each checkpoint records the metrics logged at its step; the best by loss survives pruning."""
    tmp, model, data = runs
    out = tmp / "best"
    train(config(model, data, out, train__max_steps=5, train__save_steps=1, train__save_total_limit=2,
                 train__save_best_metric="loss", train__save_best_mode="max"))
    losses = {m["step"]: m["loss"] for m in metrics(out) if m["step"] < 5}
    best = max(losses, key=losses.get)
    assert best < 3  # not among the last two, so keeping it is retention's doing
    assert _kept(out) == [best, 3, 4]
    assert json.loads((out / f"checkpoint-{best}" / "metrics.json").read_text())["loss"] == losses[best]


def test_unknown_best_metric_stops_after_saving(runs):
    tmp, model, data = runs
    out = tmp / "typo"
    with pytest.raises(UserError, match=r"'los' is not among the metrics logged at step 1 \(.*loss.*\)"):
        train(config(model, data, out, train__max_steps=3, train__save_steps=1, train__save_best_metric="los"))
    assert verify(out / "checkpoint-1") is None  # the run can continue with --resume


@pytest.mark.parametrize("overrides, needle", [
    ({"train.save_best_metric": "loss"}, "needs checkpoints"),
    ({"train.save_best_metric": "eval/loss", "train.save_steps": 2}, "needs held-out data"),
    ({"train.save_best_metric": "eval/loss", "train.save_steps": 4, "train.eval_steps": 3, "data.eval": "x"},
     "divisor of train.save_steps (4)"),
    ({"train.save_best_metric": "loss", "train.save_steps": 3, "train.logging_steps": 2}, "train.logging_steps"),
    ({"train.save_total_limit": -1}, "must be ≥ 0"),
])
def test_retention_settings_are_checked(runs, overrides, needle):
    tmp, model, data = runs
    with pytest.raises(UserError, match="save_") as exc:
        config(model, data, tmp / "unused", **{k.replace(".", "__"): v for k, v in overrides.items()})
    assert needle in str(exc.value)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG (SIGXFSZ ignored), as a full disk fails a write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def trainee():
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    t = TrainConfig(lr=1e-3)
    optimizer = build_optimizer(model.parameters(), t)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()  # so the optimizer has state to save
    return model, optimizer, build_scheduler(optimizer, t, 10), tok


def test_write_error_leaves_previous_checkpoint(runs, tmp_path, trainee):
    tmp, model_dir, data = runs
    model, optimizer, scheduler, _ = trainee
    cfg = config(model_dir, data, tmp_path)
    save_checkpoint(tmp_path, TrainState(step=1), model, optimizer, scheduler, cfg)
    with file_size_limit(100_000), pytest.raises(UserError) as exc:
        save_checkpoint(tmp_path, TrainState(step=2), model, optimizer, scheduler, cfg)
    assert f"could not write checkpoint {tmp_path / 'checkpoint-2'}: File too large" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no partial folder
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert load_checkpoint(tmp_path / "checkpoint-1", model, optimizer, scheduler).step == 1


def test_failed_model_save_keeps_the_previous_model(tmp_path, trainee):
    model, _, _, tok = trainee
    save_model(model, tmp_path / "final", tokenizer=tok)
    before = {p.name: p.read_bytes() for p in (tmp_path / "final").iterdir()}
    with file_size_limit(100_000), pytest.raises(UserError, match="could not write model .*File too large"):
        save_model(model, tmp_path / "final", tokenizer=tok)
    assert {p.name: p.read_bytes() for p in (tmp_path / "final").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="could not write model .*Not a directory"):
        save_model(model, tmp_path / "file" / "final")


def run_cli(args: list[str], cwd: Path, env: dict | None = None, limit: int | None = None):
    def preexec():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    base = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HF_HOME", "DPOKIT_CACHE")}
    return subprocess.run([sys.executable, "-m", "dpokit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300, preexec_fn=preexec)


def test_cli_run_writes_only_its_output_and_survives_a_write_error(tmp_path):
    """A run writes nothing outside its output folder (home, working folder and TMPDIR stay empty).
    Resumed under a file-size limit, saving the next checkpoint fails: exit code 2, one line, and
    the earlier checkpoint is still the one a later resume takes."""
    model, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=12)
    quiet = {name: str(tmp_path / name) for name in ("home", "cwd", "tmpdir")}
    for folder in quiet.values():
        os.mkdir(folder)
    out = tmp_path / "out"
    args = ["dpo", "--model", str(model), "--data", str(data), "--output", str(out), "--max-length", "64",
            "--max-prompt-length", "32", "--batch-size", "4", "--lr", "1e-3", "--save-steps", "2"]
    first = run_cli([*args, "--max-steps", "3"], cwd=Path(quiet["cwd"]),
                    env={"HOME": quiet["home"], "TMPDIR": quiet["tmpdir"]})
    assert first.returncode == 0, first.stderr
    for name, folder in quiet.items():
        assert not os.listdir(folder), (name, os.listdir(folder))
    assert (out / "reflogps").is_dir() and verify(out / "checkpoint-2") is None
    second = run_cli([*args, "--max-steps", "6", "--resume"], cwd=tmp_path, limit=200_000)
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("dpokit: error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"could not write checkpoint {out / 'checkpoint-4'}: File too large" in errors[0]
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-2"]
    assert latest_checkpoint(out) == out / "checkpoint-2"
