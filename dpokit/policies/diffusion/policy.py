"""``diffusion``: a caption-conditioned diffusers UNet with a DDPM schedule, as a policy.

Its log-likelihood is stood in for by minus the denoising error (Diffusion-DPO, Wallace et al.
2023; ``dpokit.losses.diffusion``): for each record one timestep t and one noise ε, shared by
the preferred and the other image, and

    log π(x_0 | c) ≈ −½·mean_i (ε_θ(x_t, t, c) − ε)_i²,   x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε,

one value per image, in a ``Logps`` with a one-position completion mask. t and ε are drawn in
``batch``, so the policy and the reference, which both read the same batch, see the same ones.
A training batch seeds each record's draw from one number taken from torch's generator (which
the loop seeds from ``train.seed`` and every checkpoint saves, so a resumed run draws the same)
and the record's index; a held-out record's draw depends on ``train.seed`` and its index only,
so every evaluation of a run measures the same noisy images.

A Stable Diffusion-style folder (``pipeline.py``) trains the same way on VAE latents, with the
frozen text encoder's states in place of the hashed words; both are computed once in ``records``.

A precomputed reference is refused: its values would be for one draw of t and ε, and every step
draws new ones.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import torch

from dpokit.errors import UserError
from dpokit.logps import Logps
from dpokit.policies.diffusion.data import ImageOptions, ImagePair, read_pairs, to_unit_range
from dpokit.policies.diffusion.model import PIPELINE_SETTINGS, SCHEDULER, SETTINGS, UNET, Denoiser, read_denoiser
from dpokit.policies.diffusion import pipeline as sd
from dpokit.store.atomic import atomic_folder

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
"""What ``lora.target_modules=all-linear`` means on a UNet: its attention projections (peft's
``all-linear`` is for transformers models only), the layers diffusers' own LoRA training adapts."""


class DiffusionPolicy:
    name = "diffusion"

    def __init__(self, cfg, settings: dict, unet: dict, scheduler, vae: dict | None = None) -> None:
        self.cfg, self.settings, self.unet_config, self.scheduler = cfg, settings, unet, scheduler
        self.vae_config = vae  # set for a pipeline (SD-style) folder: the model trains on its latents

    @classmethod
    def from_config(cls, cfg) -> DiffusionPolicy:
        from diffusers import DDPMScheduler

        folder = Path(cfg.model.path)
        if sd.is_pipeline(folder):
            unet, vae, _ = sd.check_pipeline(folder)
            try:
                scheduler = DDPMScheduler.from_pretrained(str(folder / SCHEDULER), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read scheduler/: {str(exc).splitlines()[0]}", where=str(folder)) from None
            return cls(cfg, dict(PIPELINE_SETTINGS), unet, scheduler, vae)
        try:
            settings = json.loads((folder / SETTINGS).read_text())
            unet = json.loads((folder / UNET / "config.json").read_text())
            scheduler = DDPMScheduler.from_pretrained(str(folder / SCHEDULER), local_files_only=True)
        except (OSError, ValueError):
            raise UserError(f"not a diffusion folder: {SETTINGS}, {UNET}/config.json or {SCHEDULER}/ is missing or "
                            "unreadable (dpokit.policies.diffusion.write_denoiser makes one)", where=str(folder)) from None
        return cls(cfg, settings, unet, scheduler)

    def checks(self, spec) -> list[tuple[bool, str, str]]:
        t = self.cfg.train
        return [
            (spec.input_kind != "pair", "loss.name",
             f"the diffusion policy trains on image pairs: '{spec.name}' takes {spec.input_kind} records; "
             "use diffusion_dpo (or another pairwise loss)"),
            (spec.token_kl, "loss.name", f"'{spec.name}' needs per-token distributions, which a denoiser has not"),
            (self.vae_config is None and self.unet_config.get("in_channels") not in (1, 3), "model.path",
             "the UNet denoises images in pixel space: in_channels must be 1 (grey) or 3 (RGB); a latent "
             "model loads from a Stable Diffusion-style folder (model_index.json, vae/, text_encoder/...)"),
            (self.vae_config is None and self.cfg.data.latents != "mean", "data.latents",
             "latents are drawn only for a Stable Diffusion-style folder (with vae/); this denoiser works in "
             "pixel space"),
            (t.ref == "precomputed", "train.ref",
             "a denoiser's reference error depends on each step's fresh timestep and noise; use copy (or adapter "
             "with LoRA)"),
        ]

    def records(self, path: str, input_kind: str, name: str, log) -> list[ImagePair]:
        d, seed = self.cfg.data, self.cfg.train.seed
        say = lambda line: log(f"[data:{name}] {line}")  # noqa: E731
        if self.vae_config is None:
            opts, encode = ImageOptions(self.unet_config["sample_size"], self.unet_config["in_channels"],
                                        self.settings["buckets"], self.settings["max_words"], d.ties), None
        else:  # RGB at the VAE's input size, then latents and caption states, cached as such
            folder = self.cfg.model.path
            opts = ImageOptions(sd.pixel_size(self.unet_config, self.vae_config), 3, 0, 0, d.ties,
                                sd.encoder_identity(folder, d.latents, seed))
            encode = lambda pairs: sd.encode_pairs(folder, pairs, d.latents, seed, say)  # noqa: E731
        out = Path(self.cfg.train.output)
        cache = Path(d.cache_dir or out / "data_cache") if d.cache else None
        pairs = read_pairs(path, opts, cache, out / f"data_report_{name}.json", say, encode)
        for p in pairs:
            p.fixed_noise = name != "train"
        return pairs

    def load(self, path: str) -> Denoiser:
        model = read_denoiser(path)
        if self.cfg.model.gradient_checkpointing and path == self.cfg.model.path:
            model.unet.enable_gradient_checkpointing()
        return model

    def trainable(self, module: Denoiser) -> Denoiser:
        if not self.cfg.lora.enabled:
            return module
        from peft import LoraConfig, get_peft_model

        lo = self.cfg.lora
        targets = UNET_LORA_TARGETS if lo.target_modules == "all-linear" else lo.target_modules.split(",")
        torch.manual_seed(self.cfg.train.seed)  # the adapter's A starts the same in every run of one seed
        module.unet = get_peft_model(module.unet, LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                             target_modules=targets))
        return module

    def adapters_off(self, module) -> contextlib.AbstractContextManager:
        inner = getattr(module, "module", module)  # DDP wraps the Denoiser
        if not inner.adapted:
            raise UserError("'adapter' needs LoRA (--lora): the reference is the policy with adapters off",
                            where="config", field="train.ref")
        return inner.unet.disable_adapter()

    def batch(self, records: list[ImagePair], indices: list[int], device) -> dict:
        chosen = [records[i] for i in indices]
        # One draw of torch's (checkpointed) generator per training batch; none for held-out records,
        # so evaluating (or not) leaves the training draws as they were.
        step_seed = 0 if all(r.fixed_noise for r in chosen) else int(torch.randint(0, 2**62, ()).item())
        draws = [self._draw(records[i], i, step_seed) for i in indices]
        images = torch.stack([r.images[g] for g in range(2) for r in chosen])
        batch = {"images": to_unit_range(images) if images.dtype == torch.uint8 else images,  # else: latents
                 "words": _condition(chosen),
                 "timesteps": torch.stack([t for t, _ in draws]), "noise": torch.stack([e for _, e in draws]),
                 "completion_mask": torch.ones(2 * len(chosen), 1, dtype=torch.bool),
                 "weights": torch.tensor([r.weight for r in chosen], dtype=torch.float32)}
        if any(r.tie for r in chosen):  # only batches with a tie carry the key, as for text pairs
            batch["ties"] = torch.tensor([r.tie for r in chosen], dtype=torch.bool)
        return {k: v.to(device) for k, v in batch.items()}

    def _draw(self, record: ImagePair, index: int, step_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, ε) of one record: from the step's seed and the record's index in its dataset, or (held
        out) the run's seed and the index; never from where the file lies."""
        seed = self.cfg.train.seed if record.fixed_noise else step_seed
        digest = hashlib.blake2b(f"{seed}|{index}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (), generator=gen)
        return t, torch.randn(record.images.shape[1:], generator=gen)

    def logps(self, module, batch: dict, group: int, reference: Logps | None = None, full: bool = False) -> Logps:
        """−½·mean((ε_θ(x_t, t, c) − ε)²) per image, winner and loser at the record's t and ε."""
        x0 = batch["images"]
        t, noise = batch["timesteps"].repeat(group), batch["noise"].repeat(group, 1, 1, 1)
        noisy = self.scheduler.add_noise(x0, noise, t)
        pred = module(noisy, t, batch["words"])
        err = (pred.float() - _target(self.scheduler, x0, noise, t).float()).pow(2).flatten(1).mean(1)
        mask = batch["completion_mask"].view(group, -1, 1)
        return Logps((-0.5 * err).view(group, -1, 1), mask)

    def real_tokens(self, batch: dict, group: int, input_kind: str) -> int:
        return int(batch["completion_mask"].sum())  # images

    def fingerprint(self, records: list[ImagePair]) -> str:
        h = hashlib.sha256(json.dumps([self.settings, self.unet_config], sort_keys=True, default=str).encode())
        for r in records:
            h.update(r.images.numpy().tobytes())
            h.update(json.dumps([r.words, r.source, r.tie]).encode())
            if r.context is not None:
                h.update(r.context.numpy().tobytes())
        return h.hexdigest()

    def save(self, module: Denoiser, folder: Path, weights: dict | None = None) -> None:
        """``final/``: a whole denoiser folder; a LoRA run's adapter is merged into a copy first."""
        if module.adapted:
            module = copy.deepcopy(module)
            module.unet = module.unet.merge_and_unload()
        with atomic_folder(Path(folder), "model") as tmp:
            module.save_pretrained(tmp, state_dict=weights)


def _condition(chosen: list[ImagePair]) -> torch.Tensor:
    """(2B, ...) what the UNet is conditioned on, winners then losers: text-encoder states, or hashed
    word ids padded with −1."""
    if chosen[0].context is not None:
        return torch.stack([r.context for r in chosen]).repeat(2, 1, 1)
    width = max(len(r.words) for r in chosen)
    words = torch.full((2, len(chosen), width), -1, dtype=torch.long)
    for b, r in enumerate(chosen):
        words[:, b, : len(r.words)] = torch.tensor(r.words)
    return words.view(2 * len(chosen), width)


def _target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or the velocity of a v-prediction schedule."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise UserError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)", where=SCHEDULER,
                    field="prediction_type")
