"""The denoiser a ``diffusion`` policy trains: a diffusers ``UNet2DConditionModel`` conditioned on
its caption, with a DDPM noise schedule, and the folder it lives in.

Captions enter through cross-attention. Each word is hashed into one of ``buckets`` rows, and the
UNet's own ``text_proj`` layer (``encoder_hid_dim_type="text_proj"``, a Linear from ``buckets``
to ``cross_attention_dim``) maps the word's one-hot vector to its embedding: a learned word table
that is part of the UNet's weights, so diffusers' ``save_pretrained`` keeps it and nothing else
is needed to load the model. A caption is a start word followed by its words (at most
``max_words``), with an attention mask over the padding.

A folder holds ``denoiser.json`` (dpokit's settings), ``scheduler/scheduler_config.json`` (a
``DDPMScheduler``) and ``unet/`` (diffusers' ``save_pretrained``: ``config.json`` and
``diffusion_pytorch_model.safetensors``), the layout of a Stable Diffusion folder's own
``unet/`` and ``scheduler/``; a training checkpoint of a LoRA run holds ``unet/adapter_model.safetensors``
(the adapter) instead. ``write_denoiser`` makes a small random one.

A Stable Diffusion-style folder (``model_index.json``; ``pipeline.py``) loads as a denoiser too:
its UNet, conditioned on the frozen text encoder's states, which the data carries.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from dpokit.errors import UserError
from dpokit.store.atomic import atomic_folder

SETTINGS, UNET, SCHEDULER = "denoiser.json", "unet", "scheduler"
ADAPTER = "adapter_model.safetensors"
START = "<caption>"
"""The word every caption begins with, so an empty caption still has a context to attend to."""


def caption_ids(caption: str, buckets: int, max_words: int) -> list[int]:
    """Hashed word ids of ``caption``: the start word, then its lower-cased words, cut at ``max_words``."""
    words = [START, *re.findall(r"\w+|[^\w\s]", caption.lower())][: max_words]
    return [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") % buckets for w in words]


class Denoiser(torch.nn.Module):
    """ε_θ(x_t, t, caption): the UNet (or, with LoRA, peft's model around it) and its schedule."""

    def __init__(self, unet, scheduler, settings: dict, pipeline: Path | None = None):
        super().__init__()
        self.unet, self.scheduler, self.settings = unet, scheduler, settings
        self.pipeline = pipeline  # the SD-style folder this UNet came from: a save links its frozen parts

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Predicted noise for ``sample`` (N, C, H, W) at ``timesteps`` (N,), given hashed caption
        ``words`` (N, W) padded with −1, or (a pipeline folder) text-encoder states (N, L, D)."""
        if words.is_floating_point():
            return self.unet(sample, timesteps, encoder_hidden_states=words.to(sample.dtype)).sample
        keep = words >= 0
        onehot = torch.nn.functional.one_hot(words.clamp(min=0), self.settings["buckets"]).to(sample.dtype)
        return self.unet(sample, timesteps, encoder_hidden_states=onehot,
                         encoder_attention_mask=keep.to(sample.dtype)).sample

    @property
    def adapted(self) -> bool:
        return hasattr(self.unet, "peft_config")

    def save_pretrained(self, folder, safe_serialization: bool = True, state_dict: dict | None = None) -> None:
        """What ``train.checkpoint`` calls on any policy module: the folder's files (with LoRA the
        adapter only). ``state_dict`` (a sharding engine's gathered weights) is not supported."""
        if state_dict is not None:
            raise UserError("the diffusion policy trains on one process or DDP, not a sharding engine",
                            where="config", field="train.engine")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.pipeline is not None:  # the folder's own scheduler (for sampling), VAE, text encoder...
            from dpokit.policies.diffusion.pipeline import link_frozen_parts

            link_frozen_parts(self.pipeline, folder)
        else:
            (folder / SETTINGS).write_text(json.dumps(self.settings, indent=1))
            self.scheduler.save_config(str(folder / SCHEDULER))
        if self.adapted:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            (folder / UNET).mkdir(exist_ok=True)
            state = get_peft_model_state_dict(self.unet)
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / UNET / ADAPTER))
        else:
            self.unet.save_pretrained(str(folder / UNET), safe_serialization=True)

    def load_saved_weights(self, folder) -> None:
        """The weights a ``save_pretrained`` of this model wrote to ``folder`` (a checkpoint), in place."""
        from safetensors.torch import load_file

        folder = Path(folder) / UNET
        if self.adapted:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.unet, load_file(str(folder / ADAPTER)))
            return
        self.unet.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))


def unet_config(sample_size: int, channels: int, buckets: int, block_out_channels=(32, 64),
                cross_attention_dim: int = 32) -> dict:
    """A small class-conditional UNet: one plain and one cross-attention block down, and back up."""
    return dict(sample_size=sample_size, in_channels=channels, out_channels=channels,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=tuple(block_out_channels), layers_per_block=1,
                cross_attention_dim=cross_attention_dim, attention_head_dim=8,
                norm_num_groups=min(32, min(block_out_channels)),
                encoder_hid_dim=buckets, encoder_hid_dim_type="text_proj")


def write_denoiser(folder, sample_size: int = 8, channels: int = 1, block_out_channels=(32, 64),
                   cross_attention_dim: int = 32, buckets: int = 256, max_words: int = 8,
                   timesteps: int = 1000, seed: int = 0) -> Path:
    """A new denoiser folder with seeded random weights (diffusers' own initialisation)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(sample_size, channels, buckets, block_out_channels,
                                              cross_attention_dim))
    scheduler = DDPMScheduler(num_train_timesteps=timesteps)
    settings = {"policy": "diffusion", "buckets": buckets, "max_words": max_words}
    with atomic_folder(Path(folder), "model") as tmp:
        Denoiser(unet, scheduler, settings).save_pretrained(tmp)
    return Path(folder)


def read_denoiser(path: str) -> Denoiser:
    """The denoiser of a folder ``write_denoiser`` or a diffusion run wrote, in eval mode."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    folder = Path(path)
    from dpokit.policies.diffusion.pipeline import is_pipeline

    if is_pipeline(folder):
        return _read_pipeline(folder)
    try:
        settings = json.loads((folder / SETTINGS).read_text())
    except (OSError, ValueError):
        raise UserError(f"not a diffusion folder: {SETTINGS} is missing or unreadable "
                        "(dpokit.policies.diffusion.write_denoiser makes one)", where=path) from None
    for key in ("buckets", "max_words"):
        if not isinstance(settings.get(key), int) or settings[key] < 1:
            raise UserError("must be a positive integer", where=str(folder / SETTINGS), field=key)
    if (folder / UNET / ADAPTER).is_file():
        raise UserError("holds a LoRA checkpoint's adapter only; load the run's final/ folder (merged)",
                        where=path)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder / UNET), local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(str(folder / SCHEDULER), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"cannot load the UNet or its scheduler: {str(exc).splitlines()[0]}", where=path) from None
    if unet.config.encoder_hid_dim != settings["buckets"]:
        raise UserError(f"the UNet's encoder_hid_dim ({unet.config.encoder_hid_dim}) must equal buckets",
                        where=str(folder / SETTINGS), field="buckets")
    return Denoiser(unet, scheduler, settings).eval()


PIPELINE_SETTINGS = {"policy": "diffusion", "conditioning": "text_encoder"}


def _read_pipeline(folder: Path) -> Denoiser:
    """The UNet of a Stable Diffusion-style folder, with a DDPM schedule from its scheduler's config
    (the same betas and steps: training noise, whatever sampler the folder names)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from dpokit.policies.diffusion.pipeline import check_pipeline

    check_pipeline(folder)
    if (folder / UNET / ADAPTER).is_file():
        raise UserError("holds a LoRA checkpoint's adapter only; load the run's final/ folder (merged)",
                        where=str(folder))
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder / UNET), local_files_only=True, use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(str(folder / SCHEDULER), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"cannot load the UNet (safetensors) or its scheduler: {str(exc).splitlines()[0]}",
                        where=str(folder)) from None
    return Denoiser(unet, scheduler, dict(PIPELINE_SETTINGS), pipeline=folder.resolve()).eval()


@torch.no_grad()
def sample_images(model: Denoiser, words: torch.Tensor, seed: int, steps: int = 50) -> torch.Tensor:
    """Images (N, C, H, W) in [−1, 1] drawn by DDPM ancestral sampling over ``steps`` of the
    schedule's timesteps, from noise seeded by ``seed``: the same seed gives two models the same
    starting noise and the same per-step noise."""
    from diffusers import DDPMScheduler

    if model.pipeline is not None:
        raise UserError("sample_images is for pixel-space denoisers; sample a Stable Diffusion-style folder with "
                        "diffusers.StableDiffusionPipeline.from_pretrained", where=str(model.pipeline))
    cfg = model.unet.config
    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.randn(words.shape[0], cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen).to(device)
    for t in scheduler.timesteps:
        eps = model(x, t.expand(x.shape[0]).to(device), words.to(device))
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return x.clamp(-1, 1).cpu()
