"""The ``diffusion`` policy on a Stable Diffusion-style folder: a tiny random one built here from
configs (a CLIP tokenizer from a byte vocabulary and four merges written below, a 2-layer
CLIPTextModel, a 2-block AutoencoderKL, a UNet2DConditionModel whose cross-attention width is the
text encoder's). Log-probs against VAE → noise → UNet by hand, ln 2 at policy == reference,
learning through the CLI, LoRA with adapters off, frozen parts untouched, the saved folder
reloading here and in diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from PIL import Image  # noqa: E402

from dpokit.config import load_config  # noqa: E402
from dpokit.errors import UserError  # noqa: E402
from dpokit.losses import get_loss  # noqa: E402
from dpokit.policies import build_policy_kind  # noqa: E402
from dpokit.policies.diffusion import read_denoiser  # noqa: E402
from dpokit.train import train  # noqa: E402
from helpers import metrics  # noqa: E402

PIXELS, LATENT, WIDTH, MAX_TOKENS = 16, 8, 32, 12
MERGES = ["b a", "ba r</w>", "r o", "ro w</w>"]


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes: printable Latin-1 bytes as
    themselves, the others shifted past U+0100 in order."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    out, shifted = [], 0
    for b in range(256):
        out.append(chr(b) if b in printable else chr(256 + shifted))
        shifted += b not in printable
    return out


def write_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True)
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols),
                                         *(m.replace(" ", "") for m in MERGES), "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def write_tiny_pipeline(folder: Path) -> Path:
    """A random SD 1.5-shaped folder, saved by diffusers' own StableDiffusionPipeline."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_tokenizer(folder.parent / "tokenizer_src")
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=PIXELS)
    unet = UNet2DConditionModel(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64),
                                cross_attention_dim=WIDTH, attention_head_dim=8, norm_num_groups=32)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                              steps_offset=1)  # SD 1.5's sampler and betas
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(folder))
    return folder


def png(pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def write_pairs(folder: Path, n: int, seed: int) -> Path:
    """RGB 16×16: "bar at row k" preferred (a bright bar on dim noise) over plain bright noise."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        good = torch.rand(PIXELS, PIXELS, 3, generator=gen) * 60
        good[i % PIXELS] = 255
        (folder / f"{i}_good.png").write_bytes(png(good))
        (folder / f"{i}_bad.png").write_bytes(png(torch.rand(PIXELS, PIXELS, 3, generator=gen) * 255))
        lines.append(json.dumps({"caption": f"bar at row {i % 4}", "jpg_0": f"{i}_good.png", "jpg_1": f"{i}_bad.png",
                                 "label_0": 1}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    return {"tmp": tmp, "model": write_tiny_pipeline(tmp / "sd"), "train": write_pairs(tmp / "train", 16, 0),
            "held": write_pairs(tmp / "held", 4, 1)}


def sd_config(task, out: str, **overrides):
    base = {"model.policy": "diffusion", "model.path": str(task["model"]), "data.train": str(task["train"]),
            "data.eval": str(task["held"]), "loss.name": "diffusion_dpo", "loss.beta": 500.0, "train.lr": 1e-3,
            "train.optimizer": "adamw", "train.scheduler": "constant", "train.batch_size": 8, "train.max_steps": 4,
            "train.ref": "copy", "train.output": str(task["tmp"] / out), "train.progress": False,
            "train.registry": "", "train.dtype": "fp32"}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, base)


def test_logps_match_vae_noise_unet_by_hand(task):
    """PIL → [−1, 1] → VAE posterior mean × 0.18215 → x_t from SD's scaled-linear ᾱ written out →
    the UNet on the CLIP states of the padded caption → −½·mean((ε_θ − ε)²), at the batch's t and ε."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kind = build_policy_kind(sd_config(task, "naive"), get_loss("diffusion_dpo"))
    model = kind.load(str(task["model"])).requires_grad_(False)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"unet"}  # the VAE and CLIP stay outside
    records = kind.records(str(task["held"]), "pair", "eval", lambda *_: None)
    batch = kind.batch(records, [0, 1, 2], "cpu")
    got = kind.logps(model, batch, 2)
    root = task["model"]
    vae = AutoencoderKL.from_pretrained(str(root / "vae")).eval()
    text = CLIPTextModel.from_pretrained(str(root / "text_encoder")).eval()
    tok = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet")).eval()
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    with torch.no_grad():
        for b in range(3):
            ids = tok([f"bar at row {b % 4}"], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")
            states = text(ids.input_ids).last_hidden_state
            for g, name in enumerate(("good", "bad")):
                img = Image.open(task["held"].parent / f"{b}_{name}.png").convert("RGB")
                x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1)
                z0 = vae.encode((x / 127.5 - 1)[None]).latent_dist.mean[0] * 0.18215
                t, eps = batch["timesteps"][b], batch["noise"][b]
                zt = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * eps
                pred = unet(zt[None], t[None], encoder_hidden_states=states).sample[0]
                want = -0.5 * (pred - eps).pow(2).mean()
                assert got.tokens[g, b, 0].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    assert batch["images"].shape == (6, 4, LATENT, LATENT) and batch["words"].shape == (6, MAX_TOKENS, WIDTH)


def test_latent_draws_are_seeded_and_the_cache_holds_latents_and_states(task, tmp_path):
    mean = build_policy_kind(sd_config(task, "lat", data__cache_dir=str(tmp_path)), get_loss("diffusion_dpo"))
    lines = []
    a = mean.records(str(task["held"]), "pair", "train", lines.append)
    again = mean.records(str(task["held"]), "pair", "train", lines.append)
    assert "encoded 8 images" in lines[0] and lines[-1].endswith("(cached)"), lines
    assert all(torch.equal(x.images, y.images) and torch.equal(x.context, y.context) for x, y in zip(a, again))
    draws = [build_policy_kind(sd_config(task, "lat", data__latents="sample", data__cache=False, train__seed=s),
                               get_loss("diffusion_dpo")).records(str(task["held"]), "pair", "train", lines.append)
             for s in (0, 0, 1)]
    assert torch.equal(draws[0][0].images, draws[1][0].images)  # the same seed, the same draw
    assert not torch.equal(draws[0][0].images, draws[2][0].images)
    assert not torch.equal(draws[0][0].images, a[0].images)  # a draw, not the mean


def test_the_command_line_lowers_the_loss_and_leaves_the_frozen_parts(task, tmp_path):
    """``dpokit dpo --policy diffusion --loss diffusion_dpo --ref copy`` on the folder: step 1 is ln 2
    (policy == reference); the held-out loss at fixed t and ε ends below it; final/ holds the frozen
    parts byte for byte, reloads as this kind, and loads and samples in StableDiffusionPipeline.
    (β = 100, not the thousands of SD 1.5: a random tiny UNet's errors differ between images by far more.)"""
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    args = ["dpo", "--policy", "diffusion", "--model", str(task["model"]), "--data", str(task["train"]),
            "--eval-data", str(task["held"]), "--loss", "diffusion_dpo", "--beta", "100", "--lr", "3e-3",
            "--scheduler", "constant", "--max-steps", "20", "--batch-size", "16", "--eval-steps", "10",
            "--logging-steps", "1", "--ref", "copy", "--dtype", "fp32", "--no-progress", "--registry", "",
            "--output", str(out)]
    done = subprocess.run([sys.executable, "-m", "dpokit.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    log = metrics(out)
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    losses, evals = [r["loss"] for r in log if "loss" in r], [r["eval/loss"] for r in log if "eval/loss" in r]
    # measured: steps 1-5 average 0.70 and steps 16-20 0.30; the held-out loss 0.78 at step 10, 0.25 at 20
    assert sum(losses[-5:]) / 5 < 0.5 < sum(losses[:5]) / 5 and evals[-1] < 0.45, (losses, evals)
    final, src = out / "final", task["model"]
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json", "model_index.json"):
        assert sha(final / part) == sha(src / part), part
    assert sha(final / "unet/diffusion_pytorch_model.safetensors") != sha(src / "unet/diffusion_pytorch_model.safetensors")
    tuned = read_denoiser(str(final))
    assert tuned.pipeline == final.resolve()
    build_policy_kind(sd_config(task, "again", model__path=str(final)), get_loss("diffusion_dpo"))
    pipe = StableDiffusionPipeline.from_pretrained(str(final), local_files_only=True)
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, tuned.unet.state_dict()[k])
    image = pipe("bar at row 1", num_inference_steps=2, height=PIXELS, width=PIXELS, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, PIXELS, PIXELS) and torch.isfinite(image).all()


def test_lora_with_the_adapters_off_reference(task):
    """LoRA on the UNet's attention projections: ln 2 at step 1, the checkpoint holds the adapter beside
    the linked frozen parts, final/ the merged UNet with its convolutions untouched."""
    result = train(sd_config(task, "lora", lora__enabled=True, lora__r=4, lora__alpha=8, train__ref="adapter",
                             train__lr=5e-3, train__save_steps=2), log=lambda *_: None)
    log = metrics(task["tmp"] / "lora")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    ckpt = task["tmp"] / "lora" / "checkpoint-2"
    assert (ckpt / "unet" / "adapter_model.safetensors").is_file() and (ckpt / "vae").is_dir()
    final, start = read_denoiser(str(result.final)).unet, read_denoiser(str(task["model"])).unet
    attn = lambda u: u.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight  # noqa: E731
    assert not torch.equal(attn(final), attn(start))
    torch.testing.assert_close(final.conv_in.weight, start.conv_in.weight)
    assert sha(result.final / "vae/diffusion_pytorch_model.safetensors") == \
        sha(task["model"] / "vae/diffusion_pytorch_model.safetensors")


def test_resume_from_a_pipeline_checkpoint_gives_identical_weights(task):
    """Four steps straight, against two, the checkpoint (a pipeline folder), and two more after --resume."""
    import shutil

    full = train(sd_config(task, "full"), log=lambda *_: None)
    part = task["tmp"] / "part"
    train(sd_config(task, "part", train__save_steps=2), log=lambda *_: None)
    shutil.rmtree(part / "final")
    shutil.rmtree(part / "checkpoint-4", ignore_errors=True)
    resumed = train(sd_config(task, "part", train__save_steps=2, train__resume=True), log=lambda *_: None)
    a, b = read_denoiser(str(full.final)).unet.state_dict(), read_denoiser(str(resumed.final)).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sdxl_and_mismatched_folders_are_refused(task, tmp_path):
    index = json.loads((task["model"] / "model_index.json").read_text())
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(UserError, match="SDXL"):
        build_policy_kind(sd_config(task, "r", model__path=str(xl)), get_loss("diffusion_dpo"))
    bad = tmp_path / "bad"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (bad / part).mkdir(parents=True)
        for f in (task["model"] / part).glob("*.json"):
            (bad / part / f.name).write_text(f.read_text())
    (bad / "model_index.json").write_text(json.dumps(index))
    text = json.loads((bad / "text_encoder/config.json").read_text())
    (bad / "text_encoder/config.json").write_text(json.dumps({**text, "hidden_size": 48}))
    with pytest.raises(UserError, match="cross_attention_dim"):
        build_policy_kind(sd_config(task, "r", model__path=str(bad)), get_loss("diffusion_dpo"))
    from dpokit.policies.diffusion import write_denoiser

    pixels = write_denoiser(tmp_path / "pixels", sample_size=4, buckets=16)
    with pytest.raises(UserError) as err:  # a latent draw means nothing in pixel space: refused, not ignored
        build_policy_kind(sd_config(task, "r", model__path=str(pixels), data__latents="sample"),
                          get_loss("diffusion_dpo"))
    assert err.value.field == "data.latents"
