"""A replacement UNet file for one generation: SDXL-Lightning / Hyper-SD publish full distilled UNets.

The published `*_unet.safetensors` files hold a diffusers `UNet2DConditionModel` state dict (the card loads them
with `unet.load_state_dict`); ComfyUI conversions use the original (LDM) names under `model.diffusion_model.`.
Both are read; every key and shape must match the base model's UNet, otherwise the file is refused before any
generation with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from idforge.errors import ModelFormatError
from idforge.identity.ldm_keys import UNET_PREFIX, unet_name_to_ldm, up_blocks_with_attention


def _from_ldm(state: dict[str, torch.Tensor], unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    names = list(unet.state_dict())
    with_attention = up_blocks_with_attention(names)
    table = {
        UNET_PREFIX + unet_name_to_ldm(name, unet.config["layers_per_block"], with_attention): name
        for name in names
    }
    return {table.get(key, key): value for key, value in state.items()}


def load_unet_state(path: str | Path, unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The file's tensors keyed by the UNet's own parameter names, in the UNet's dtype, on the CPU; checked."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several error types for a bad file
        raise ModelFormatError(
            f"{path}: not a readable safetensors UNet ({str(exc).splitlines()[0]})"
        ) from None
    if any(key.startswith(UNET_PREFIX) for key in state):
        state = _from_ldm(state, unet)
    own = unet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ModelFormatError(
            f"{path}: not a UNet for this base model ({len(missing)} keys missing, {len(unexpected)} unexpected, "
            f"e.g. {example})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ModelFormatError(
                f"{path}: {key} has shape {tuple(value.shape)}, the base model's UNet {tuple(own[key].shape)}"
            )
    return {key: value.to(own[key].dtype) for key, value in state.items()}


@torch.no_grad()
def swap_unet_weights(unet: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy `state` into the UNet in place; return the tensors it replaced (pass them back to restore)."""
    own = unet.state_dict()
    previous = {}
    for key, value in state.items():
        target = own[key]
        previous[key] = target.detach().clone()
        target.copy_(value.to(target.device))
    return previous
