"""TR-DPO's moving reference (``--ref-sync-steps`` τ, ``--ref-sync-alpha`` α): the copied
reference mixed towards the policy every τ steps, its weights read back from checkpoints and
checked against the policy's weights at those steps, an exact resume, and one-line refusals;
the same with LoRA and the adapter strategy, whose reference is the base plus a dense delta."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dpokit.cli import main
from dpokit.train import train
from dpokit.train.checkpoint import REFERENCE, load_state
from helpers import config, final_weights, tiny_model_dir, write_pairs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Soft (τ = 1, α = 0.5) and hard (τ = 2, α = 1) runs of 4 steps with a checkpoint at every step."""
    tmp = tmp_path_factory.mktemp("refsync")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=16)
    common = {"train__max_steps": 4, "train__save_steps": 1, "train__save_total_limit": 0, "train__ref": "copy",
              "train__lr": 1e-2}
    for name, steps, alpha in (("soft", 1, 0.5), ("hard", 2, 1.0)):
        train(config(model, data, tmp / name, train__ref_sync_steps=steps, train__ref_sync_alpha=alpha, **common),
              log=lambda *_: None)
    return tmp, model, data, common


def _policy(out, step):
    return load_file(str(out / f"checkpoint-{step}" / "model.safetensors"))


def _reference(out, step):
    return load_state(out / f"checkpoint-{step}" / REFERENCE)


def test_soft_update_mixes_the_policy_into_the_reference(runs):
    """ref_k = ½·θ_k + ½·ref_{k−1}, ref_0 = the starting weights: checked with the weights each
    checkpoint holds (steps 1–3; the last step is ``final/``, which holds the policy only)."""
    tmp, model, _, _ = runs
    start = load_file(str(model / "model.safetensors"))
    previous = start
    for step in range(1, 4):
        theta, ref = _policy(tmp / "soft", step), _reference(tmp / "soft", step)
        for name, value in ref.items():
            key = name if name in theta else next(k for k in theta if k.endswith(name))
            torch.testing.assert_close(value, 0.5 * theta[key] + 0.5 * previous[key], atol=1e-6, rtol=1e-6)
        previous = {k: ref[n] for n in ref for k in theta if k == n or k.endswith(n)}
    moved = _reference(tmp / "soft", 3)
    assert any(not torch.equal(moved[n], start[k]) for n in moved for k in start if k == n or k.endswith(n))


def test_hard_update_copies_the_policy_every_tau_steps(runs):
    """τ = 2: the reference is the starting model after step 1, the policy of step 2 after steps 2 and 3."""
    tmp, model, _, _ = runs
    start = load_file(str(model / "model.safetensors"))
    for step, theta in ((1, start), (2, _policy(tmp / "hard", 2)), (3, _policy(tmp / "hard", 2))):
        ref = _reference(tmp / "hard", step)
        for name, value in ref.items():
            key = name if name in theta else next(k for k in theta if k.endswith(name))
            assert torch.equal(value, theta[key]), (step, name)


def _resume_soft_run(tmp, model, data, fields: dict):
    """The soft run (τ = 1, α = 0.5) copied without its last checkpoint and final, then resumed."""
    out = tmp / "resumed"
    shutil.copytree(tmp / "soft", out)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-3")
    train(config(model, data, out, train__ref_sync_steps=1, train__ref_sync_alpha=0.5, train__resume=True, **fields),
          log=lambda *_: None)
    return out


def test_resume_is_exact_with_a_moving_reference(runs):
    """Resuming the soft run from checkpoint-2 gives the same reference at step 3 and the same final
    weights, bit for bit (without the saved reference it would restart from the starting weights)."""
    tmp, model, data, common = runs
    out = _resume_soft_run(tmp, model, data, common)
    a, b = final_weights(tmp / "soft"), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(v, _reference(out, 3)[k]) for k, v in _reference(tmp / "soft", 3).items())


@pytest.mark.parametrize("flags, field", [(["--ref", "precomputed", "--ref-sync-steps", "2"],
                                           "train.ref_sync_steps"),
                                          (["--ref", "copy", "--ref-sync-steps", "2", "--lora"], "train.ref_sync_steps"),
                                          (["--ref", "none", "--ref-sync-steps", "2"], "train.ref_sync_steps"),
                                          (["--ref", "copy", "--ref-sync-steps", "2", "--ref-sync-alpha", "0"],
                                           "train.ref_sync_alpha"),
                                          (["--ref-sync-steps", "-1"], "train.ref_sync_steps")])
def test_refusals_are_one_line(tmp_path, capsys, flags, field):
    rc = main(["dpo", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"),
               "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and field in err, err


def test_loading_a_checkpoint_restores_the_moving_reference(runs):
    """What a resume and a guard's rollback both call: the reference's parameters come back from
    ``reference.safetensors``; a checkpoint without them is refused for a moving reference."""
    from transformers import AutoModelForCausalLM

    from dpokit.config import TrainConfig
    from dpokit.errors import UserError
    from dpokit.train.checkpoint import load_checkpoint
    from dpokit.train.optim import build_optimizer, build_scheduler

    tmp, model_dir, _, _ = runs
    policy, reference = (AutoModelForCausalLM.from_pretrained(model_dir) for _ in range(2))
    t = TrainConfig(lr=1e-2, optimizer="adamw")
    optimizer = build_optimizer(policy.parameters(), t)
    scheduler = build_scheduler(optimizer, t, 4)
    assert load_checkpoint(tmp / "soft" / "checkpoint-2", policy, optimizer, scheduler, reference=reference).step == 2
    saved = _reference(tmp / "soft", 2)
    assert all(torch.equal(p, saved[n]) for n, p in reference.named_parameters())
    shutil.copytree(tmp / "soft" / "checkpoint-2", tmp / "no-ref")
    (tmp / "no-ref" / REFERENCE).unlink()
    with pytest.raises(UserError, match="holds no reference weights"):
        load_checkpoint(tmp / "no-ref", policy, optimizer, scheduler, reference=reference)


# -- the adapter strategy: θ_ref = W₀ + Δ_ref, Δ_ref ← α·s·B·A + (1 − α)·Δ_ref -------------------

LORA = {"lora__enabled": True, "lora__r": 4, "lora__alpha": 8, "train__ref": "adapter", "train__max_steps": 4,
        "train__save_steps": 1, "train__save_total_limit": 0, "train__lr": 5e-2}


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refsync-lora")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=16)
    train(config(model, data, tmp / "soft", train__ref_sync_steps=1, train__ref_sync_alpha=0.5, **LORA),
          log=lambda *_: None)
    return tmp, model, data


def _adapter_delta(folder, key, scaling=8 / 4):
    """s·B·A of one layer from a checkpoint's adapter file (the independent side of the check)."""
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    name = key.replace("/", ".").removeprefix("base_model.model.")
    a = next(v for k, v in adapter.items() if k.endswith(f"{name}.lora_A.weight"))
    b = next(v for k, v in adapter.items() if k.endswith(f"{name}.lora_B.weight"))
    return scaling * b.double() @ a.double()


def test_soft_update_mixes_the_adapter_into_the_reference_delta(lora_runs):
    tmp, _, _ = lora_runs
    previous = None
    for step in (1, 2, 3):
        folder = tmp / "soft" / f"checkpoint-{step}"
        ref = _reference(tmp / "soft", step)
        assert ref, "the checkpoint holds the reference's deltas"
        for key, delta in ref.items():
            expected = 0.5 * _adapter_delta(folder, key) + 0.5 * (0 if previous is None else previous[key].double())
            torch.testing.assert_close(delta.double(), expected, atol=1e-6, rtol=1e-5)
        previous = ref
    assert any(d.abs().max() > 0 for d in previous.values()), "the reference moved"


def test_moving_adapter_reference_is_the_base_plus_its_delta(tmp_path):
    """Its log-probs through the hooks equal those of a plain model whose adapted weights are
    W₀ + Δ_ref; after a hard sync (α = 1) they equal the policy's own, adapters on."""
    from dpokit.losses import get_loss
    from dpokit.policies import build_policy_kind
    from dpokit.policies.reference import MovingAdapterReference

    model_dir, data = tiny_model_dir(tmp_path), write_pairs(tmp_path / "pairs.jsonl", n=4)
    (tmp_path / "out").mkdir()
    cfg = config(model_dir, data, tmp_path / "out", **LORA)
    kind = build_policy_kind(cfg, get_loss("sigmoid"))
    records = kind.records(str(data), "pair", "train", lambda *_: None)
    batch = kind.batch(records, [0, 1, 2, 3], torch.device("cpu"))
    policy = kind.trainable(kind.load(str(model_dir)))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reference = MovingAdapterReference(policy, kind, contextlib.nullcontext, sync_steps=2, sync_alpha=1.0)
    base = kind.logps(kind.load(str(model_dir)), batch, 2).sum
    torch.testing.assert_close(reference.logps(batch, 2).sum, base)  # Δ_ref = 0: the base
    reference.after_step(policy, 1)  # not a sync step
    torch.testing.assert_close(reference.logps(batch, 2).sum, base)
    reference.after_step(policy, 2)
    with torch.no_grad():
        torch.testing.assert_close(reference.logps(batch, 2).sum, kind.logps(policy, batch, 2).sum,
                                   atol=1e-5, rtol=1e-5)
        for name, p in policy.named_parameters():  # the adapter moves on; the reference stays
            if "lora_A" in name:
                p.add_(0.3)
    reference.sync_alpha = 0.5
    reference.after_step(policy, 4)
    merged = kind.load(str(model_dir))
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for key, delta in reference.model.items():
            modules[key.replace("/", ".").removeprefix("base_model.model.")].weight.add_(delta)
    torch.testing.assert_close(reference.logps(batch, 2).sum, kind.logps(merged, batch, 2).sum,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference.logps(batch, 2).sum, base)


def test_resume_is_exact_with_a_moving_adapter_reference(lora_runs):
    tmp, model, data = lora_runs
    out = _resume_soft_run(tmp, model, data, LORA)
    a = load_file(str(tmp / "soft" / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(v, _reference(out, 3)[k]) for k, v in _reference(tmp / "soft", 3).items())


def test_a_ref_model_of_another_shape_cannot_move(tmp_path, capsys):
    from dpokit.policies.lm.tiny import write_tiny_model

    model, other = tiny_model_dir(tmp_path), write_tiny_model(tmp_path / "wider", hidden=96)
    rc = main(["dpo", "--model", str(model), "--ref-model", str(other), "--data",
               str(write_pairs(tmp_path / "p.jsonl", n=8)), "--output", str(tmp_path / "o"), "--ref", "copy",
               "--ref-sync-steps", "1", "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.ref_path" in err, err


def test_online_rounds_move_the_reference_from_where_each_round_starts_it(tmp_path):
    """``dpokit online`` with a fixed reference and TR-DPO: round 2's reference starts at the
    initial model (its --ref-model) and, with τ = 1 and α = 1, is round 2's policy after its first step."""
    from dpokit.config import load_config
    from dpokit.online import OnlineConfig, online
    from helpers.online import online_settings, write_prompts

    model = tiny_model_dir(tmp_path)
    out = tmp_path / "online"
    settings = online_settings(model, out, write_prompts(tmp_path / "p.jsonl", 8), write_prompts(tmp_path / "h.jsonl", 4, 100),
                               train__ref="copy", train__ref_sync_steps=1, train__save_steps=1, online__rounds=2)
    online(load_config(None, settings, root=OnlineConfig), log=lambda *_: None)
    import yaml

    second = yaml.safe_load((out / "round-2" / "config.yaml").read_text())
    assert second["model"]["ref_path"] == str(model) and second["train"]["ref_sync_steps"] == 1
    theta, ref = _policy(out / "round-2", 1), _reference(out / "round-2", 1)
    for name, value in ref.items():
        key = name if name in theta else next(k for k in theta if k.endswith(name))
        assert torch.equal(value, theta[key]), name
