"""The ``diffusion`` policy kind: a caption-conditioned diffusers UNet trained with Diffusion-DPO
(docs/diffusion.md). Importing this package needs the ``diffusion`` extra (diffusers, pillow)
only when a model is built or loaded."""

from dpokit.policies.diffusion.model import Denoiser, caption_ids, read_denoiser, sample_images, write_denoiser

__all__ = ["Denoiser", "caption_ids", "read_denoiser", "sample_images", "write_denoiser"]
