"""The base model: text encoding, latent set-up and VAE decoding for SDXL and SD1.5.

We keep diffusers' pipeline object only as a bag of components and for its `encode_prompt` (prompt weighting,
clip-skip and LoRA scale handling stay diffusers' own); the denoising loop is ours (engine/loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from idforge.engine.loop import TextConditioning
from idforge.errors import ModelFormatError


@dataclass
class BaseModel:
    """A loaded base model and what we know about it."""

    pipe: DiffusionPipeline
    family: str  # "sdxl" | "sd15"
    source: str  # path or hub id it was loaded from

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


def base_family(pipe: DiffusionPipeline) -> str:
    """SDXL or SD1.5, from the pipeline class (the only two families the adapters exist for)."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd15"
    raise ModelFormatError(
        f"base model {type(pipe).__name__} is neither SDXL nor SD1.5; idforge needs one of these"
    )


def encode_text(
    base: BaseModel, prompt: str, negative_prompt: str, batch: int, do_cfg: bool, width: int, height: int
) -> TextConditioning:
    """Prompt embeddings for `batch` images (and SDXL's pooled embeddings and size conditioning)."""
    pipe = base.pipe
    device = pipe.unet.device
    negative = negative_prompt or None
    if base.family == "sdxl":
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=batch,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative,
        )
        projection_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            (height, width),
            (0, 0),
            (height, width),
            dtype=cond.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.to(device).repeat(batch, 1)
        return TextConditioning(cond, uncond if do_cfg else None, pooled, pooled_uncond, time_ids)
    cond, uncond = pipe.encode_prompt(prompt, device, batch, do_cfg, negative_prompt=negative)
    return TextConditioning(cond, uncond if do_cfg else None)


def vae_decode_dtype(vae) -> torch.dtype:
    """The dtype the VAE decodes in: an fp16 VAE that would overflow is upcast to fp32 (as diffusers does),
    unless the fast path chose its dtype (bf16, fp16-fix)."""
    keep = getattr(vae, "idforge_keep_dtype", False)
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and not keep:
        return torch.float32
    return vae.dtype


@torch.no_grad()
def decode_latents(base: BaseModel, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode to PIL images, upcasting an fp16 SDXL VAE that would overflow (as diffusers does)."""
    vae = base.pipe.vae
    original_dtype = vae.dtype
    if vae_decode_dtype(vae) != original_dtype:
        vae.to(vae_decode_dtype(vae))
    latents = latents.to(vae.dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = latents * std_t / vae.config.scaling_factor + mean_t
    else:
        latents = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            latents = latents + shift
    pixels = vae.decode(latents, return_dict=False)[0]
    if vae.dtype != original_dtype:
        vae.to(original_dtype)
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return [Image.fromarray(np.round(p * 255).astype(np.uint8)) for p in pixels]


def pil_to_control_tensor(images: list[Image.Image], width: int, height: int) -> torch.Tensor:
    """Control images as a (B, 3, H, W) float tensor in [0, 1] at the output size (diffusers' convention)."""
    arrays = []
    for image in images:
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
