"""Tiny SD1.5: a StableDiffusionPipeline folder (no safety checker) with SD1.5's block structure at toy widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from . import tokenizer
from .builders import (
    meta_model,
    random_diffusers_model,
    random_transformers_model,
    save_diffusers,
    save_transformers,
)
from .pipeline import model_index, scheduler_config, write_pipeline_files
from .sdxl import TEXT_WIDTH, UNET_VALUES, text_config, vae_config

FOLDER = "diffusers/tiny-sd15"
CROSS_WIDTH = TEXT_WIDTH  # 64, SD1.5: 768

# Values of SD1.5's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = scheduler_config("PNDMScheduler")

MODEL_INDEX = model_index(
    "StableDiffusionPipeline",
    "PNDMScheduler",
    requires_safety_checker=False,
    safety_checker=[None, None],
)


def unet_config() -> dict[str, Any]:
    """SD1.5's UNet config with toy widths (SD1.5: channels 320/640/1280/1280, 8 heads, cross width 768)."""
    return {
        **UNET_VALUES,
        "attention_head_dim": 2,
        "block_out_channels": [32, 32, 64, 64],
        "cross_attention_dim": CROSS_WIDTH,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def meta_unet() -> UNet2DConditionModel:
    """The tiny SD1.5 UNet without weights: for enumerating `attn_processors` and module widths."""
    return meta_model(UNet2DConditionModel, unet_config())


def write_sd15(kit_dir: Path, seed: int) -> dict[str, str]:
    """Write the tiny SD1.5 pipeline folder."""
    root = kit_dir / FOLDER
    save_diffusers(
        random_diffusers_model(UNet2DConditionModel, unet_config(), seed, "sd15/unet"), root / "unet"
    )
    save_diffusers(random_diffusers_model(AutoencoderKL, vae_config(0.18215), seed, "sd15/vae"), root / "vae")
    save_transformers(
        random_transformers_model(CLIPTextModel, text_config("quick_gelu"), seed, "sd15/text_encoder"),
        root / "text_encoder",
    )
    tokenizer.write_tokenizer(root / "tokenizer")
    write_pipeline_files(
        root,
        SCHEDULER_CONFIG,
        MODEL_INDEX,
        "Tiny SD1.5 (StableDiffusionPipeline folder, no safety checker, cross width 64).",
        seed,
    )
    return {"sd15": FOLDER}
