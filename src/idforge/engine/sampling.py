"""The shared tail of every method: text encoding, initial noise, the denoising loop, VAE decoding.

Methods set up their identity adapters (on an `IdentityAttention` controller) and their ControlNets (as
`ControlUnit`s), then call `sample_and_decode`; memory switches (CPU offload, VAE tiling) and extra LoRAs are applied
here once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack

import torch
from PIL import Image

from idforge.engine.base import BaseModel, decode_latents, encode_text
from idforge.engine.fastpath import check_fast_request
from idforge.engine.loop import ControlUnit, DenoiseJob, TextConditioning, denoise
from idforge.engine.memory import on_device, park_on_cpu, text_encoders, vae_tiling
from idforge.engine.params import GenerationParams
from idforge.engine.schedulers import make_scheduler, step_options
from idforge.engine.seeds import initial_noise, make_generators
from idforge.engine.session import Engine


def sample_and_decode(
    engine: Engine,
    base: BaseModel,
    gen: GenerationParams,
    seeds: list[int],
    size: tuple[int, int],
    attention,  # idforge.identity.attention.IdentityAttention with its adapters' inputs set
    controls: Sequence[ControlUnit] = (),
    progress: Callable[[int, int], None] | None = None,
    unet_contexts: Sequence[AbstractContextManager] = (),
    prompts: Sequence[tuple[str, str]] | None = None,
) -> tuple[torch.Tensor, list[Image.Image]]:
    """Denoise one batch (image i from seeds[i]) and decode it; returns (final latents on CPU, images).

    `unet_contexts` are entered around the loop only (e.g. a FaceID LoRA merged into the UNet for this call).
    `prompts` gives sample i its own (prompt, negative) (jobs sharing a pass, server/batching.py); each is
    encoded alone, exactly as in its single run. None: `gen`'s prompts for every sample.
    """
    width, height = size
    batch = len(seeds)
    device, dtype, offload = engine.device, base.unet.dtype, gen.cpu_offload
    check_fast_request(engine.fast, offload, device)
    scale = base.vae_scale_factor
    latent_hw = (height // scale, width // scale)
    control_models = [unit.model for unit in controls]
    park_on_cpu([*text_encoders(base), base.unet, base.pipe.vae, *control_models], device, offload)

    with on_device(text_encoders(base), device, offload):
        if prompts is None:
            prompt, negative = gen.styled_prompts()
            text = encode_text(base, prompt, negative, batch, gen.do_cfg, width, height)
        else:
            text = concat_text([encode_text(base, p, n, 1, gen.do_cfg, width, height) for p, n in prompts])
    steps, guidance, scheduler_name = gen.sampler()
    scheduler = make_scheduler(
        scheduler_name,
        base.pipe.scheduler.config,
        timestep_spacing=gen.timestep_spacing,
        prediction_type=gen.prediction_type,
    )
    scheduler.set_timesteps(steps, device=device)
    latents = initial_noise(seeds, (base.unet.config.in_channels, *latent_hw), dtype, device)
    latents = latents * scheduler.init_noise_sigma
    attention.set_cfg(gen.do_cfg)
    attention.set_latent_size(latent_hw)
    job = DenoiseJob(
        latents=latents,
        text=text,
        scheduler=scheduler,
        timesteps=scheduler.timesteps,
        guidance=guidance,
        controls=list(controls),
        generators=make_generators(seeds),
        on_timestep=attention.set_timestep,
        on_step=progress,
        step_kwargs=step_options(scheduler_name, gen.eta),
    )
    with ExitStack() as stack:
        stack.enter_context(engine.unet_weights(base, gen.unet))  # first: LoRAs merge onto the replaced UNet
        for context in unet_contexts:
            stack.enter_context(context)
        stack.enter_context(on_device([base.unet, *control_models], device, offload))
        stack.enter_context(attention)
        stack.enter_context(engine.loras(base, gen.preset_loras()))
        latents = denoise(base.unet, job)
    with on_device([base.pipe.vae], device, offload), vae_tiling(base, gen.vae_tiling):
        images = decode_latents(base, latents)
    return latents.detach().float().cpu(), images


def concat_text(parts: Sequence[TextConditioning]) -> TextConditioning:
    """One batch of prompt embeddings from per-sample ones (same shapes: the same base and size)."""

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values)

    return TextConditioning(
        torch.cat([part.cond for part in parts]),
        cat("uncond"),
        cat("pooled_cond"),
        cat("pooled_uncond"),
        cat("time_ids"),
    )
