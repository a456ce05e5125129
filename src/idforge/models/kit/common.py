"""Shared helpers of the tiny kit: per-part seeds, seeded random weights, deterministic file writers.

Every random number in the kit comes from a `torch.Generator` seeded from (kit seed, part name), so a part's
bytes do not depend on which other parts ran before it, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

README_NAME = "README.md"


def part_generator(seed: int, part: str) -> torch.Generator:
    """A CPU generator for one part, independent of the order in which parts run."""
    mixed = (int(seed) * 1_000_003 + zlib.crc32(part.encode("utf-8"))) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def randn(
    shape: Iterable[int], generator: torch.Generator, std: float = 1.0, mean: float = 0.0
) -> torch.Tensor:
    """Normal float32 tensor drawn from `generator`."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32) * std + mean


def linear_weight(
    out_features: int, in_features: int, generator: torch.Generator, gain: float = 1.0
) -> torch.Tensor:
    """A (out, in) weight with std gain/sqrt(in): activations keep their scale through the layer."""
    return randn((out_features, in_features), generator, std=gain / math.sqrt(in_features))


def norm_weight(width: int, generator: torch.Generator) -> torch.Tensor:
    """A LayerNorm/GroupNorm scale near 1, random so that a wrong key mapping changes results."""
    return randn((width,), generator, std=0.1, mean=1.0)


def bias(width: int, generator: torch.Generator) -> torch.Tensor:
    return randn((width,), generator, std=0.02)


def random_value(name: str, shape: torch.Size, generator: torch.Generator, gain: float = 1.0) -> torch.Tensor:
    """A random value for parameter `name`: fan-in scaled weights, norm scales near 1, small biases."""
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return randn(shape, generator, std=gain / math.sqrt(max(fan_in, 1)))
    if name.endswith("weight"):
        return randn(shape, generator, std=0.1, mean=1.0)
    return randn(shape, generator, std=0.02 * gain)


@torch.no_grad()
def randomize_(
    module: torch.nn.Module, generator: torch.Generator, small: Mapping[str, float] | None = None
) -> None:
    """Overwrite every parameter of `module` (registration order) with seeded random values.

    `small` maps name prefixes to a gain: zero-initialised layers (ControlNet zero convolutions) get small
    random values instead of zeros so that the part visibly changes outputs.
    """
    small = small or {}
    for name, param in module.named_parameters():
        gain = next((g for prefix, g in small.items() if name.startswith(prefix)), 1.0)
        param.copy_(random_value(name, param.shape, generator, gain))


def contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own, contiguous float tensors: torch.save would otherwise store whole shared storages."""
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def save_bin(path: Path, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """torch.save a dict of plain tensor dicts (loadable with weights_only=True), as the published .bin files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({group: contiguous(tensors) for group, tensors in state.items()}, path)


def save_flat_safetensors(path: Path, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """The flat safetensors variant of a grouped .bin: keys `<group>.<key>`."""
    flat = {f"{group}.{key}": value for group, tensors in state.items() for key, value in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(contiguous(flat), str(path))


def write_json(path: Path, data: object) -> None:
    """Pretty, key-sorted JSON with a trailing newline (stable bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_readme(folder: Path, what: str, seed: int) -> None:
    """Mark a folder as a random tiny kit model, so nobody mistakes it for real weights."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        "# idforge tiny kit: random weights, not a real model\n\n"
        f"{what}\n\n"
        f"Written by `idforge kit tiny` (seed {seed}): tiny, randomly initialised weights in the real on-disk "
        "format and key layout of the published checkpoint. Useful only for tests; outputs are noise.\n"
    )
    (folder / README_NAME).write_text(text, encoding="utf-8")
