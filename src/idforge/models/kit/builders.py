"""Seeded construction and saving of diffusers / transformers models for the kit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .common import part_generator, randomize_


def random_diffusers_model(
    cls: Any, config: Mapping[str, Any], seed: int, part: str, small: Mapping[str, float] | None = None
) -> Any:
    """Build a diffusers model from `config` and fill it with seeded random weights."""
    model = cls.from_config(dict(config))
    randomize_(model, part_generator(seed, part), small)
    return model.eval()


def random_transformers_model(cls: Any, config: Any, seed: int, part: str) -> Any:
    """Build a transformers model from a config object and fill it with seeded random weights."""
    model = cls(config)
    randomize_(model, part_generator(seed, part))
    return model.eval()


def meta_model(cls: Any, config: Mapping[str, Any]) -> Any:
    """A weightless model (meta device): enough to enumerate modules and read shapes quickly."""
    with torch.device("meta"):
        return cls.from_config(dict(config))


def save_diffusers(model: Any, folder: Path) -> None:
    """config.json + diffusion_pytorch_model.safetensors, as published diffusers folders."""
    model.save_pretrained(str(folder), safe_serialization=True)


def save_transformers(model: Any, folder: Path) -> None:
    """config.json + model.safetensors (without transformers' per-save progress bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
