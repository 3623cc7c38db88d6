"""Stable Diffusion-style folders (diffusers' pipeline layout) as a ``diffusion`` policy.

A folder with ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
``scheduler/`` (Stable Diffusion 1.5 and its kin): the UNet is what trains; the VAE and the CLIP
text encoder are frozen and never enter the training module. Each image is encoded once into
its latent (``AutoencoderKL.encode(x).latent_dist``: the mean, or one seeded draw, times
``vae.config.scaling_factor``) and each caption once into the text encoder's last hidden states
(the tokenizer padded to its ``model_max_length``, as the pipeline prompts it); both are cached
with the decoded records, so training runs the UNet alone.

The pipeline's own scheduler is for sampling; training noises with a ``DDPMScheduler`` built from
its config (the same betas and timestep count). A saved folder writes the trained UNet into
``unet/`` and hard-links (or, across file systems, copies) every other entry of the folder it was
loaded from, so it is again such a folder and ``StableDiffusionPipeline.from_pretrained`` loads it.

SDXL-class folders (``text_encoder_2``, ``tokenizer_2``) are refused: their UNet also takes the
second encoder's pooled embedding and the "added time ids" (original size, crop, target size).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from dpokit.data.cache import data_hash
from dpokit.errors import UserError
from dpokit.store.atomic import MANIFEST

MODEL_INDEX = "model_index.json"
UNET, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER = "unet", "vae", "text_encoder", "tokenizer", "scheduler"
FROZEN = (VAE, TEXT_ENCODER, TOKENIZER)
ENCODE_BATCH = 8
"""Images per VAE call while encoding: small, as a 512-pixel SD image takes much memory."""


def is_pipeline(folder) -> bool:
    return (Path(folder) / MODEL_INDEX).is_file()


def check_pipeline(folder) -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) configs of a pipeline folder that this kind can train, or a UserError."""
    folder = Path(folder)
    try:
        index = json.loads((folder / MODEL_INDEX).read_text())
    except (OSError, ValueError):
        raise UserError(f"{MODEL_INDEX} is unreadable", where=str(folder)) from None
    if "text_encoder_2" in index or "tokenizer_2" in index:
        raise UserError("an SDXL-class folder (two text encoders, added time ids) is not supported; "
                        "Stable Diffusion 1.x/2.x-style folders are", where=str(folder / MODEL_INDEX))
    configs = {}
    for part, name in ((UNET, "config.json"), (VAE, "config.json"), (TEXT_ENCODER, "config.json")):
        try:
            configs[part] = json.loads((folder / part / name).read_text())
        except (OSError, ValueError):
            raise UserError(f"{part}/{name} is missing or unreadable (a pipeline folder needs unet/, vae/, "
                            "text_encoder/, tokenizer/ and scheduler/)", where=str(folder)) from None
    for part in (TOKENIZER, SCHEDULER):
        if not (folder / part).is_dir():
            raise UserError(f"{part}/ is missing", where=str(folder))
    unet, vae, text = configs[UNET], configs[VAE], configs[TEXT_ENCODER]
    if unet.get("in_channels") != vae.get("latent_channels", 4):
        raise UserError(f"the UNet's in_channels ({unet.get('in_channels')}) must equal the VAE's latent_channels "
                        f"({vae.get('latent_channels', 4)})", where=str(folder / UNET / "config.json"))
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise UserError(f"the UNet's cross_attention_dim ({unet.get('cross_attention_dim')}) must equal the text "
                        f"encoder's hidden_size ({text.get('hidden_size')})", where=str(folder / UNET / "config.json"))
    return unet, vae, text


def pixel_size(unet: dict, vae: dict) -> int:
    """The image side the VAE turns into the UNet's latent side: each VAE block but the last halves it."""
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def encoder_identity(folder, latents: str, seed: int) -> str:
    """What the cached latents and caption states depend on beyond the data: the frozen parts' files
    and the latent mode (with its seed when the latent is a draw)."""
    h = hashlib.sha256(f"{latents}|{seed if latents == 'sample' else ''}".encode())
    for part in FROZEN:
        h.update(data_hash(Path(folder) / part).encode())
    return h.hexdigest()[:32]


def encode_pairs(folder, pairs: list, latents: str, seed: int, log) -> None:
    """Replace each pair's uint8 images by their latents and give it its caption's token ids and
    text-encoder states (one tensor per distinct caption, shared by its pairs), in place."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    from dpokit.policies.diffusion.data import to_unit_range

    folder = Path(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        # safetensors only: a pickled .bin can run code when read (model.allow_pickle is for LM folders)
        vae = AutoencoderKL.from_pretrained(str(folder / VAE), local_files_only=True,
                                            use_safetensors=True).to(device).eval()
        text = CLIPTextModel.from_pretrained(str(folder / TEXT_ENCODER), local_files_only=True,
                                             use_safetensors=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the VAE, text encoder (safetensors) or tokenizer: {str(exc).splitlines()[0]}",
                        where=str(folder)) from None
    images = torch.stack([p.images for p in pairs]).flatten(0, 1)  # (2N, 3, H, W): pair i's images at 2i, 2i+1
    z = torch.cat([_latents(vae, to_unit_range(images[i: i + ENCODE_BATCH]), latents, seed, i, device)
                   for i in range(0, len(images), ENCODE_BATCH)])
    for i, p in enumerate(pairs):
        p.images = z[2 * i: 2 * i + 2].contiguous().clone()
    captions = sorted({p.caption for p in pairs})
    ids, states = encode_captions(tokenizer, text, captions, device)
    row = {c: k for k, c in enumerate(captions)}
    for p in pairs:
        p.words, p.context = ids[row[p.caption]], states[row[p.caption]]
    log(f"encoded {len(images)} images to latents {tuple(z.shape[1:])} ({latents}) and {len(captions)} captions "
        f"to text-encoder states {tuple(states.shape[1:])}")


@torch.no_grad()
def _latents(vae, x: torch.Tensor, mode: str, seed: int, start: int, device) -> torch.Tensor:
    """Scaled latents of images ``x`` in [−1, 1]; a draw's noise is seeded per image by its place in
    the data (``start`` + its row), so it does not depend on ENCODE_BATCH."""
    dist = vae.encode(x.to(device)).latent_dist
    z = dist.mean
    if mode == "sample":
        eps = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + start + k))
                           for k in range(len(z))])
        z = z + dist.std * eps.to(device)
    shift = vae.config.get("shift_factor") or 0.0  # absent in SD 1.x/2.x VAEs
    return ((z - shift) * vae.config.scaling_factor).float().cpu()


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], device="cpu") -> tuple[list[list[int]], torch.Tensor]:
    """Token ids and last hidden states (N, model_max_length, hidden) of ``captions``, padded and
    truncated as Stable Diffusion's pipeline prompts its text encoder (no attention mask)."""
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    states = torch.cat([text_encoder(tokens.input_ids[i: i + 64].to(device))[0].float().cpu()
                        for i in range(0, len(captions), 64)])
    return tokens.input_ids.tolist(), states


def link_frozen_parts(source, target) -> None:
    """Every entry of pipeline folder ``source`` but ``unet/`` into ``target``: hard links (no space
    taken), or copies where the two folders are on different file systems."""
    source, target = Path(source), Path(target)
    for entry in sorted(source.iterdir()):
        if entry.name in (UNET, MANIFEST) or entry.name.startswith("."):
            continue  # the manifest is written anew for the new folder; dot-entries are temporary folders
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, copy_function=_link_or_copy, dirs_exist_ok=True)
        else:
            _link_or_copy(entry, target / entry.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)
