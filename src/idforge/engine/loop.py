"""The one denoising loop: UNet + identity attention + any number of gated ControlNets + CFG.

InstantID, FaceID and Insta Depth differ only in what they attach (identity adapters through the attention
processors, ControlNets as `ControlUnit`s); they all run through `denoise`. The loop is written out flat, in the
style of diffusers' pipelines, because the reference behaviours differ from diffusers' stock pipelines in two places:
IdentityNet takes the face tokens (not the text) as its cross-attention context, and every part has its own
start/end window on the noise schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel

from idforge.engine.schedulers import Scheduler
from idforge.identity.attention import is_active


@dataclass
class ControlUnit:
    """One ControlNet attached to a generation, with its own strength, window, context and mask."""

    name: str
    model: ControlNetModel
    image: torch.Tensor  # (B, 3, H, W) in [0, 1], one control image per output image
    strength: float
    window: tuple[float, float] = (float("inf"), float("-inf"))
    # Face tokens for IdentityNet: (uncond (B, T, C), cond (B, T, C)); None means the text embeddings.
    face_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: torch.Tensor | None = None  # (B, 1, h, w) multiplying the residuals (resized per resolution)


@dataclass
class TextConditioning:
    """Prompt embeddings for the UNet; `pooled` and `time_ids` only for SDXL."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    pooled_cond: torch.Tensor | None = None
    pooled_uncond: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None  # (B, 6)


@dataclass
class DenoiseJob:
    latents: torch.Tensor  # initial noise already scaled by the scheduler's init sigma
    text: TextConditioning
    scheduler: Scheduler
    timesteps: torch.Tensor
    guidance: float
    controls: list[ControlUnit] = field(default_factory=list)
    generators: list[torch.Generator] | None = None
    # Called with the current timestep before the UNet runs (identity attention windows).
    on_timestep: Callable[[float], None] | None = None
    # Called after each step with (step_index, total_steps).
    on_step: Callable[[int, int], None] | None = None
    step_kwargs: dict = field(default_factory=dict)  # extra scheduler.step arguments (TCD's eta)


def _cfg_batch(uncond: torch.Tensor | None, cond: torch.Tensor, do_cfg: bool) -> torch.Tensor:
    if not do_cfg:
        return cond
    assert uncond is not None, "classifier-free guidance needs the unconditional embeddings"
    return torch.cat([uncond, cond])


def _resize_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.shape[-2:] == like.shape[-2:]:
        return mask.to(like.dtype)
    return F.interpolate(mask.float(), size=like.shape[-2:], mode="bilinear", align_corners=False).to(
        like.dtype
    )


def control_inputs(
    controls: list[ControlUnit], text_context: torch.Tensor, dtype: torch.dtype, do_cfg: bool
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each unit's cross-attention context and control image for the CFG batch: step-invariant, made once (the
    same image tensor every step also lets a ControlNet reuse its conditioning embedding, engine/fastpath.py)."""
    prepared = {}
    for unit in controls:
        if unit.face_tokens is not None:
            context = _cfg_batch(unit.face_tokens[0], unit.face_tokens[1], do_cfg)
        else:
            context = text_context
        image = torch.cat([unit.image, unit.image]) if do_cfg else unit.image
        prepared[id(unit)] = (context.to(dtype), image.to(dtype))
    return prepared


def run_controls(
    controls: list[ControlUnit],
    latent_input: torch.Tensor,
    timestep: torch.Tensor,
    text_context: torch.Tensor,
    added_cond: dict[str, torch.Tensor] | None,
    do_cfg: bool,
    t_value: float | None = None,
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """Sum the residuals of every ControlNet active at this timestep (each scaled by its strength, masked).

    `t_value` is the timestep as a Python float (no device-to-host sync for the window test); `inputs` holds
    each unit's (context, control image) for the CFG batch, made once per request by `control_inputs`.
    """
    down_total: list[torch.Tensor] | None = None
    mid_total: torch.Tensor | None = None
    t_value = float(timestep) if t_value is None else t_value
    if inputs is None:
        inputs = control_inputs(controls, text_context, latent_input.dtype, do_cfg)
    for unit in controls:
        if unit.strength == 0.0 or not is_active(t_value, unit.window):
            continue
        context, image = inputs[id(unit)]
        down, mid = unit.model(
            latent_input,
            timestep,
            encoder_hidden_states=context,
            controlnet_cond=image,
            conditioning_scale=1.0,
            added_cond_kwargs=added_cond,
            return_dict=False,
        )
        # The strength is applied here, not inside the ControlNet: a compiled ControlNet does not recompile for
        # every strength a request brings (same product as diffusers' own `sample * conditioning_scale`).
        down = [res * unit.strength for res in down]
        mid = mid * unit.strength
        if unit.mask is not None:
            mask = torch.cat([unit.mask, unit.mask]) if do_cfg else unit.mask
            down = [res * _resize_mask(mask, res) for res in down]
            mid = mid * _resize_mask(mask, mid)
        if down_total is None:
            down_total, mid_total = list(down), mid
        else:
            down_total = [a + b for a, b in zip(down_total, down, strict=True)]
            mid_total = mid_total + mid
    return down_total, mid_total


@torch.no_grad()
def denoise(unet: UNet2DConditionModel, job: DenoiseJob) -> torch.Tensor:
    """Run the scheduler loop and return the final latents."""
    do_cfg = job.guidance > 1.0 and job.text.uncond is not None
    text = job.text
    text_context = _cfg_batch(text.uncond, text.cond, do_cfg)
    added_cond = None
    if text.pooled_cond is not None:
        assert text.time_ids is not None, "SDXL pooled embeddings come with time_ids"
        added_cond = {
            "text_embeds": _cfg_batch(text.pooled_uncond, text.pooled_cond, do_cfg),
            "time_ids": _cfg_batch(text.time_ids, text.time_ids, do_cfg),
        }
    latents = job.latents
    total = len(job.timesteps)
    # Step-invariant work once per request; the timesteps reach the host once, so nothing inside the loop waits
    # for the GPU (window tests and attention gating read Python floats).
    t_values = [float(v) for v in job.timesteps.tolist()]
    inputs = control_inputs(job.controls, text_context, latents.dtype, do_cfg)
    for index, t in enumerate(job.timesteps):
        latent_input = torch.cat([latents, latents]) if do_cfg else latents
        latent_input = job.scheduler.scale_model_input(latent_input, t)
        if job.on_timestep is not None:
            job.on_timestep(t_values[index])
        down_res, mid_res = run_controls(
            job.controls, latent_input, t, text_context, added_cond, do_cfg, t_values[index], inputs
        )
        noise_pred = unet(
            latent_input,
            t,
            encoder_hidden_states=text_context,
            added_cond_kwargs=added_cond,
            down_block_additional_residuals=down_res,
            mid_block_additional_residual=mid_res,
            return_dict=False,
        )[0]
        if do_cfg:
            noise_uncond, noise_cond = noise_pred.chunk(2)
            noise_pred = noise_uncond + job.guidance * (noise_cond - noise_uncond)
        latents = job.scheduler.step(
            noise_pred, t, latents, generator=job.generators, return_dict=False, **job.step_kwargs
        )[0]
        if job.on_step is not None:
            job.on_step(index + 1, total)
    return latents
