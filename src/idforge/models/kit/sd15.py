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
from .common import write_json, write_readme
from .sdxl import DIFFUSERS_VERSION, TEXT_WIDTH, text_config, vae_config

FOLDER = "diffusers/tiny-sd15"
CROSS_WIDTH = TEXT_WIDTH  # 64, SD1.5: 768

# Values of SD1.5's scheduler/scheduler_config.json.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def unet_config() -> dict[str, Any]:
    """SD1.5's UNet config with toy widths (SD1.5: channels 320/640/1280/1280, 8 heads, cross width 768)."""
    return {
        "act_fn": "silu",
        "attention_head_dim": 2,
        "block_out_channels": [32, 32, 64, 64],
        "center_input_sample": False,
        "cross_attention_dim": CROSS_WIDTH,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 8,
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
    write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_json(root / "model_index.json", MODEL_INDEX)
    write_readme(
        root, "Tiny SD1.5 (StableDiffusionPipeline folder, no safety checker, cross width 64).", seed
    )
    return {"sd15": FOLDER}
