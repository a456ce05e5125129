"""Memory switches for small GPUs: model CPU offload (stage by stage) and VAE tiling.

With `cpu_offload`, models rest on the CPU and each stage moves only what it needs to the GPU (text encoders, then
UNet + ControlNets, then the VAE), as diffusers' `enable_model_cpu_offload` does; peak GPU memory drops to the
largest stage at the cost of host-device copies on every call. On a CPU device both switches change nothing but
the VAE's tiling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from idforge.engine.base import BaseModel


@contextmanager
def on_device(
    modules: Sequence[torch.nn.Module | None], device: torch.device, offload: bool
) -> Iterator[None]:
    """With `offload`, move `modules` to `device` for the block and back to the CPU after it."""
    present = [m for m in modules if m is not None]
    if not offload or device.type == "cpu":
        yield
        return
    for module in present:
        module.to(device)
    try:
        yield
    finally:
        for module in present:
            module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def park_on_cpu(modules: Sequence[torch.nn.Module | None], device: torch.device, offload: bool) -> None:
    """Before an offloaded call: models cached on the GPU by an earlier call go back to the CPU."""
    if offload and device.type != "cpu":
        for module in modules:
            if module is not None:
                module.to("cpu")


def text_encoders(base: BaseModel) -> list[torch.nn.Module | None]:
    pipe = base.pipe
    return [getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)]


@contextmanager
def vae_tiling(base: BaseModel, enabled: bool) -> Iterator[None]:
    """Decode in tiles for this call only (the cached VAE is left as it was)."""
    vae = base.pipe.vae
    if not enabled:
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()
