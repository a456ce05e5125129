"""Resize an attention mask to one layer's token grid (SPEC.md section 2, the mask grid rule).

A UNet layer sees the latent at a reduced resolution, flattened to L tokens (row-major). The mask is resized
to that grid with the rule ComfyUI uses, which only needs the latent size and L: grid height
`h / sqrt(h*w / L)`, truncated, plus one when L is not divisible by it; width `L // height`; bilinear.
The same rule serves the IP attention and the engine's ControlNet residual masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from idforge.errors import ParameterError


def mask_grid(latent_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    """(grid height, grid width) of a layer with `num_tokens` tokens for a latent of size `latent_hw`."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if h <= 0 or w <= 0 or num_tokens <= 0:
        raise ParameterError("mask", f"cannot fit a mask to latent {h}x{w} with {num_tokens} tokens")
    height = int(h / math.sqrt(h * w / num_tokens))
    height = max(height, 1)
    if num_tokens % height != 0:
        height += 1
    width = num_tokens // height
    return height, width


def mask_for_tokens(mask: torch.Tensor, latent_hw: tuple[int, int], num_tokens: int) -> torch.Tensor:
    """Resize `mask` (H, W) or (B, H, W) to a layer's L tokens: (L, 1) or (B, L, 1), same dtype as given.

    Raises ParameterError when the grid rule gives a grid that does not hold exactly L tokens (a latent whose
    aspect the UNet's down-sampling does not keep); the caller can then not place the mask on that layer.
    """
    if mask.ndim not in (2, 3):
        raise ParameterError("mask", f"expected a (H, W) or (B, H, W) tensor, got shape {tuple(mask.shape)}")
    height, width = mask_grid(latent_hw, num_tokens)
    if height * width != num_tokens:
        raise ParameterError(
            "mask",
            f"grid {height}x{width} from latent {latent_hw[0]}x{latent_hw[1]} does not hold {num_tokens} tokens",
        )
    batched = mask if mask.ndim == 3 else mask.unsqueeze(0)
    dtype = batched.dtype if batched.is_floating_point() else torch.float32
    resized = F.interpolate(batched.unsqueeze(1).to(dtype), size=(height, width), mode="bilinear")
    tokens = resized.reshape(resized.shape[0], num_tokens, 1)
    return tokens if mask.ndim == 3 else tokens[0]


def mask_for_feature_map(
    mask: torch.Tensor, latent_hw: tuple[int, int], feature_hw: tuple[int, int]
) -> torch.Tensor:
    """Resize `mask` (H, W) or (B, H, W) to a (B, 1, h, w) multiplier for a feature map such as a ControlNet
    residual, with the same grid rule as the IP attention (so both see the same mask at each resolution).

    Where the rule's grid is not the feature map's own shape (odd aspect ratios), resize to the feature map.
    """
    h, w = int(feature_hw[0]), int(feature_hw[1])
    batched = mask if mask.ndim == 3 else mask.unsqueeze(0)
    if mask_grid(latent_hw, h * w) == (h, w):
        return mask_for_tokens(batched, latent_hw, h * w).reshape(batched.shape[0], 1, h, w)
    dtype = batched.dtype if batched.is_floating_point() else torch.float32
    return F.interpolate(batched.unsqueeze(1).to(dtype), size=(h, w), mode="bilinear")
