"""Seeds: random when not given, always reported; image i of a call uses seed + i."""

from __future__ import annotations

import secrets

import torch

from idforge.engine.params import MAX_SEED


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the given one, or a fresh random one (reported in the output's metadata)."""
    if seed is None or seed < 0:
        return secrets.randbelow(2**32)
    return int(seed) % (MAX_SEED + 1)


def image_seeds(seed: int, count: int) -> list[int]:
    """Per-image seeds, so that image i can be regenerated alone with seed + i and num_images = 1."""
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


def make_generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same noise on every device."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def initial_noise(
    seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """One noise sample per seed, drawn on the CPU so results do not depend on the GPU's RNG."""
    samples = [torch.randn(shape, generator=g, dtype=torch.float32) for g in make_generators(seeds)]
    return torch.stack(samples).to(device=device, dtype=dtype)
