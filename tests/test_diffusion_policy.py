"""The ``diffusion`` policy: a tiny random diffusers UNet trained with Diffusion-DPO through the
same ``train()`` as every kind. Its log-probs against the UNet called by hand at the same t and ε,
ln 2 while policy == reference, learning, an exact resume, LoRA with the adapters-off reference,
and the Pick-a-Pic reader's errors and tie counts."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
from PIL import Image  # noqa: E402

from dpokit.config import load_config  # noqa: E402
from dpokit.errors import UserError  # noqa: E402
from dpokit.losses import get_loss  # noqa: E402
from dpokit.losses.diffusion import denoising_logps  # noqa: E402
from dpokit.policies import build_policy_kind  # noqa: E402
from dpokit.policies.diffusion import caption_ids, read_denoiser, write_denoiser  # noqa: E402
from dpokit.train import train  # noqa: E402
from helpers import metrics  # noqa: E402

SIZE = 8


def png(pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def bar(row: int, noise: torch.Generator) -> torch.Tensor:
    """A bright horizontal bar on a dim noisy ground: the preferred kind of image."""
    img = torch.rand(SIZE, SIZE, generator=noise) * 60
    img[row] = 255
    return img


def write_pairs(folder: Path, n: int, seed: int, ties: int = 0) -> Path:
    """Captions "bar at row k": jpg_0 is the bar (preferred, label 1) or the plain noise
    (label 0, preferred jpg_1), as PNG files beside the JSONL; the last ``ties`` rows are ties."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        row = i % SIZE
        good, bad = bar(row, gen), torch.rand(SIZE, SIZE, generator=gen) * 255
        (folder / f"{i}_good.png").write_bytes(png(good))
        (folder / f"{i}_bad.png").write_bytes(png(bad))
        flip = i % 2 == 1
        label = 0.5 if i >= n - ties else (0 if flip else 1)
        first, second = (f"{i}_bad.png", f"{i}_good.png") if flip else (f"{i}_good.png", f"{i}_bad.png")
        lines.append(json.dumps({"caption": f"bar at row {row}", "jpg_0": first, "jpg_1": second, "label_0": label}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffusion")
    return {"tmp": tmp, "model": write_denoiser(tmp / "unet", sample_size=SIZE, channels=1, buckets=64, seed=0),
            "train": write_pairs(tmp / "train", 32, 0), "held": write_pairs(tmp / "held", 8, 1)}


def diffusion_config(task, out: str, **overrides):
    base = {"model.policy": "diffusion", "model.path": str(task["model"]), "data.train": str(task["train"]),
            "data.eval": str(task["held"]), "loss.name": "diffusion_dpo", "loss.beta": 500.0, "train.lr": 1e-3,
            "train.optimizer": "adamw", "train.scheduler": "constant", "train.batch_size": 8,
            "train.max_steps": 6, "train.ref": "copy", "train.output": str(task["tmp"] / out),
            "train.progress": False, "train.registry": "", "train.dtype": "fp32"}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


def test_logps_match_the_unet_called_by_hand_at_the_same_t_and_noise(task):
    """x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε from the schedule's ᾱ written out, the UNet called on it with the
    caption's one-hot words, −½·mean((ε_θ − ε)²): the same numbers as the policy's ``logps``, and as
    ``denoising_logps`` of the loss module."""
    cfg = diffusion_config(task, "naive")
    kind = build_policy_kind(cfg, get_loss("diffusion_dpo"))
    model = kind.load(str(task["model"])).requires_grad_(False)
    records = kind.records(str(task["held"]), "pair", "eval", lambda *_: None)
    batch = kind.batch(records, [0, 1, 2], "cpu")
    got = kind.logps(model, batch, 2)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)  # DDPMScheduler's default linear betas
    for g in range(2):
        for b in range(3):
            x0 = records[b].images[g].float() / 127.5 - 1
            t, eps = batch["timesteps"][b], batch["noise"][b]
            xt = alphas[t].sqrt() * x0 + (1 - alphas[t]).sqrt() * eps
            words = torch.tensor([caption_ids(f"bar at row {b % SIZE}", 64, 8)])
            hot = torch.nn.functional.one_hot(words, 64).float()
            pred = model.unet(xt[None], t[None], encoder_hidden_states=hot).sample[0]
            want = -0.5 * (pred - eps).pow(2).mean()
            assert got.tokens[g, b, 0].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    pred = model(kind.scheduler.add_noise(batch["images"], batch["noise"].repeat(2, 1, 1, 1),
                                          batch["timesteps"].repeat(2)), batch["timesteps"].repeat(2), batch["words"])
    lib = denoising_logps(pred.view(2, 3, 1, SIZE, SIZE), batch["noise"].repeat(2, 1, 1, 1).view(2, 3, 1, SIZE, SIZE))
    torch.testing.assert_close(lib.tokens, got.tokens)


def test_winner_and_loser_share_t_and_noise_and_held_out_draws_repeat(task):
    cfg = diffusion_config(task, "draws")
    kind = build_policy_kind(cfg, get_loss("diffusion_dpo"))
    train_recs = kind.records(str(task["train"]), "pair", "train", lambda *_: None)
    held = kind.records(str(task["held"]), "pair", "eval", lambda *_: None)
    a, b = kind.batch(train_recs, [0, 1], "cpu"), kind.batch(train_recs, [0, 1], "cpu")
    assert a["noise"].shape == (2, 1, SIZE, SIZE) and a["images"].shape == (4, 1, SIZE, SIZE)
    assert not torch.equal(a["noise"], b["noise"])  # each training step draws afresh
    torch.testing.assert_close(kind.batch(held, [0, 1], "cpu")["noise"], kind.batch(held, [0, 1], "cpu")["noise"])


def test_policy_equal_to_reference_gives_ln2_then_the_loss_falls(task):
    """Step 1: policy == reference at one t and ε per pair, so every pair's loss is log 2; twelve steps
    of lr 1e-3 then bring the held-out loss (at fixed t and ε per pair) from log 2 to 0.114 (measured)."""
    result = train(diffusion_config(task, "copy", train__max_steps=12, train__logging_steps=1), log=lambda *_: None)
    log = metrics(task["tmp"] / "copy")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.eval_metrics["loss"] < 0.3, result.eval_metrics
    again = read_denoiser(str(result.final))
    start = read_denoiser(str(task["model"]))
    assert not torch.equal(again.unet.conv_in.weight, start.unet.conv_in.weight)
    assert (result.final / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_gives_identical_weights(task):
    """Six steps straight, against three steps, a checkpoint, and three more after --resume."""
    full = train(diffusion_config(task, "full"), log=lambda *_: None)
    part = task["tmp"] / "part"
    train(diffusion_config(task, "part", train__save_steps=3), log=lambda *_: None)
    shutil.rmtree(part / "final")
    for extra in (part / "checkpoint-6",):
        shutil.rmtree(extra, ignore_errors=True)
    resumed = train(diffusion_config(task, "part", train__save_steps=3, train__resume=True), log=lambda *_: None)
    a, b = read_denoiser(str(full.final)).unet.state_dict(), read_denoiser(str(resumed.final)).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluating_every_step_leaves_the_training_draws_as_they_were(task):
    """Held-out batches take no draw from torch's generator: three steps with an evaluation after
    each end in the same weights as three steps without held-out data."""
    evals = train(diffusion_config(task, "evals", train__max_steps=3, train__eval_steps=1), log=lambda *_: None)
    plain = train(diffusion_config(task, "plain", train__max_steps=3, data__eval=None), log=lambda *_: None)
    a, b = read_denoiser(str(evals.final)).unet.state_dict(), read_denoiser(str(plain.final)).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_with_the_adapters_off_reference(task):
    """LoRA on the attention projections: ln 2 at step 1 (adapters start at B = 0), the base weights
    untouched, and final/ holds the merged UNet, which differs from the start."""
    result = train(diffusion_config(task, "lora", lora__enabled=True, lora__r=4, lora__alpha=8, train__ref="adapter",
                                    train__lr=5e-3, train__max_steps=4, train__save_steps=2), log=lambda *_: None)
    log = metrics(task["tmp"] / "lora")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (task["tmp"] / "lora" / "checkpoint-2" / "unet" / "adapter_model.safetensors").is_file()
    final, start = read_denoiser(str(result.final)).unet, read_denoiser(str(task["model"])).unet
    assert not torch.equal(final.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight,
                           start.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight)
    torch.testing.assert_close(final.conv_in.weight, start.conv_in.weight)


def test_ties_are_counted_when_dropped_and_kept_for_a_tie_loss(task, tmp_path):
    data = write_pairs(tmp_path / "ties", 10, 2, ties=3)
    lines = []
    kind = build_policy_kind(diffusion_config(task, "ties", data__cache=False), get_loss("diffusion_dpo"))
    assert len(kind.records(str(data), "pair", "train", lines.append)) == 7
    assert "3 ties dropped" in lines[0] and "10 records" in lines[0]
    report = json.loads((task["tmp"] / "ties" / "data_report_train.json").read_text())
    assert report["dropped"] == {"tie (label_0 = 0.5)": 3} and report["records_out"] == 7
    assert [e["record"] for e in report["events"]] == [f"{data}:{row}" for row in (8, 9, 10)]
    keep = build_policy_kind(diffusion_config(task, "ties", data__ties="keep", loss__name="dpo_rk", data__cache=False),
                             get_loss("dpo_rk"))
    kept = keep.records(str(data), "pair", "train", lines.append)
    assert len(kept) == 10 and sum(r.tie for r in kept) == 3
    assert keep.batch(kept, [0, 9], "cpu")["ties"].tolist() == [False, True]


def test_the_decoded_images_are_cached_by_a_fingerprint_of_the_files(task, tmp_path):
    data = write_pairs(tmp_path / "c", 4, 3)
    kind = build_policy_kind(diffusion_config(task, "cache", data__cache_dir=str(tmp_path / "cache")),
                             get_loss("diffusion_dpo"))
    lines = []
    first = kind.records(str(data), "pair", "train", lines.append)
    again = kind.records(str(data), "pair", "train", lines.append)
    assert lines[1].endswith("(cached)") and all(torch.equal(a.images, b.images) for a, b in zip(first, again))
    (tmp_path / "c" / "0_good.png").write_bytes(png(torch.zeros(SIZE, SIZE)))  # an image changes: a new key
    third = kind.records(str(data), "pair", "train", lines.append)
    assert not lines[2].endswith("(cached)") and int(third[0].images[0].sum()) == 0


def test_a_parquet_file_with_image_bytes_reads_the_same(task, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "pq"
    jsonl = write_pairs(folder, 4, 4)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    table = pa.table({"caption": [r["caption"] for r in rows], "label_0": [float(r["label_0"]) for r in rows],
                      "jpg_0": [(folder / r["jpg_0"]).read_bytes() for r in rows],
                      "jpg_1": [(folder / r["jpg_1"]).read_bytes() for r in rows]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    kind = build_policy_kind(diffusion_config(task, "pq", data__cache=False), get_loss("diffusion_dpo"))
    a = kind.records(str(jsonl), "pair", "train", lambda *_: None)
    b = kind.records(str(tmp_path / "pairs.parquet"), "pair", "train", lambda *_: None)
    assert all(torch.equal(x.images, y.images) and x.words == y.words for x, y in zip(a, b))
    assert b[0].source == f"{tmp_path / 'pairs.parquet'}:row 1"


def test_bad_records_name_file_row_and_field(task, tmp_path):
    kind = build_policy_kind(diffusion_config(task, "bad", data__cache=False), get_loss("diffusion_dpo"))
    (tmp_path / "ok.png").write_bytes(png(torch.zeros(SIZE, SIZE)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    good = {"caption": "x", "jpg_0": "ok.png", "jpg_1": "ok.png", "label_0": 1}
    cases = [({**good, "jpg_1": "missing.png"}, "jpg_1", "cannot read image file"),
             ({**good, "jpg_0": "junk.png"}, "jpg_0", "not a decodable image"),
             ({**good, "label_0": 2}, "label_0", "must be 1"),
             ({**good, "label_0": True}, "label_0", "must be 1"),
             ({**good, "caption": None}, "caption", "not a string"),
             ({**good, "jpg_0": 3}, "jpg_0", "image bytes or a path")]
    for obj, field, msg in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(obj) + "\n")
        with pytest.raises(UserError, match=msg) as err:
            kind.records(str(path), "pair", "train", lambda *_: None)
        assert err.value.where == f"{path}:2" and err.value.field == field


def test_refusals_name_the_setting(task, tmp_path):
    with pytest.raises(UserError) as err:
        build_policy_kind(diffusion_config(task, "r", train__ref="precomputed"), get_loss("diffusion_dpo"))
    assert err.value.field == "train.ref"
    with pytest.raises(UserError) as err:
        build_policy_kind(diffusion_config(task, "r", loss__name="kto"), get_loss("kto"))
    assert err.value.field == "loss.name"
    latent = write_denoiser(tmp_path / "latent", sample_size=4, channels=4, buckets=16)
    with pytest.raises(UserError, match="in_channels") as err:
        build_policy_kind(diffusion_config(task, "r", model__path=str(latent)), get_loss("diffusion_dpo"))
    assert err.value.field == "model.path"
    with pytest.raises(UserError, match="not a diffusion folder"):
        build_policy_kind(diffusion_config(task, "r", model__path=str(tmp_path)), get_loss("diffusion_dpo"))


def test_the_command_line_trains_a_denoiser_and_refuses_bad_records(task, tmp_path):
    args = ["dpo", "--policy", "diffusion", "--model", str(task["model"]), "--loss", "diffusion_dpo",
            "--max-steps", "2", "--batch-size", "4", "--ref", "copy", "--no-progress", "--registry", ""]
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args, "--data", str(task["train"]),
                           "--output", str(tmp_path / "ok")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / "final" / "denoiser.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"caption": "x", "jpg_0": "nope.png", "jpg_1": "nope.png", "label_0": 1}) + "\n")
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args, "--data", str(bad),
                           "--output", str(tmp_path / "bad")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bad.jsonl:1" in done.stderr, done.stderr


def test_the_core_does_not_import_diffusers():
    """diffusers and PIL load only when a diffusion model or image is read (the ``diffusion`` extra)."""
    code = ("import sys, dpokit, dpokit.policies, dpokit.policies.diffusion, dpokit.train, dpokit.cli; "
            "print(sorted(m for m in ('diffusers', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
