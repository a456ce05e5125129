"""Tiny SDXL: a StableDiffusionXLPipeline folder with SDXL's block structure at toy widths.

Same structure as stabilityai/stable-diffusion-xl-base-1.0: UNet down (DownBlock2D, CrossAttnDownBlock2D x2),
up (CrossAttnUpBlock2D x2, UpBlock2D), UNetMidBlock2DCrossAttn, layers_per_block 2, "text_time" added
conditioning; two CLIP text encoders whose widths add up to the UNet cross-attention width; a 4-level VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import tokenizer
from .builders import (
    meta_model,
    random_diffusers_model,
    random_transformers_model,
    save_diffusers,
    save_transformers,
)
from .pipeline import model_index, scheduler_config, write_pipeline_files

FOLDER = "diffusers/tiny-sdxl"
TEXT_WIDTH = 64  # each text encoder; the UNet sees both concatenated
CROSS_WIDTH = 2 * TEXT_WIDTH  # 128, SDXL: 768 + 1280 = 2048
POOLED_WIDTH = 64  # text_encoder_2 projection_dim, SDXL: 1280
TIME_EMBED_DIM = 8  # addition_time_embed_dim, SDXL: 256

# Values of SDXL base 1.0's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = scheduler_config(
    "EulerDiscreteScheduler",
    interpolation_type="linear",
    prediction_type="epsilon",
    sample_max_value=1.0,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)


# The UNet values the SD1.5 and SDXL kits share (as the published UNets do): 4 latent channels, two layers a
# block, GroupNorm 32, and the sample size of a 64-pixel image.
UNET_VALUES: dict[str, Any] = {
    "act_fn": "silu",
    "center_input_sample": False,
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
}


def unet_config() -> dict[str, Any]:
    """SDXL's UNet config with toy widths (SDXL: channels 320/640/1280, transformer depths 1/2/10)."""
    return {
        **UNET_VALUES,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": TIME_EMBED_DIM,
        "attention_head_dim": [2, 4, 4],
        "block_out_channels": [32, 64, 64],
        "cross_attention_dim": CROSS_WIDTH,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + POOLED_WIDTH,
        "transformer_layers_per_block": [1, 1, 2],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def vae_config(scaling_factor: float = 0.13025) -> dict[str, Any]:
    """4-level AutoencoderKL (factor 8), toy channels; SDXL's scaling factor 0.13025."""
    return {
        "act_fn": "silu",
        "block_out_channels": [8, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 64,
        "scaling_factor": scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_config(hidden_act: str, projection_dim: int = POOLED_WIDTH) -> CLIPTextConfig:
    """A tiny CLIP text encoder whose vocabulary is the kit tokenizer's."""
    ids = tokenizer.special_ids()
    return CLIPTextConfig(
        vocab_size=tokenizer.vocab_size(),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.MODEL_MAX_LENGTH,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["eos"],
    )


def meta_unet() -> UNet2DConditionModel:
    """The tiny SDXL UNet without weights: for enumerating `attn_processors` and module widths."""
    return meta_model(UNet2DConditionModel, unet_config())


def random_unet(seed: int) -> UNet2DConditionModel:
    return random_diffusers_model(UNet2DConditionModel, unet_config(), seed, "sdxl/unet")


MODEL_INDEX = model_index(
    "StableDiffusionXLPipeline",
    "EulerDiscreteScheduler",
    add_watermarker=None,
    force_zeros_for_empty_prompt=True,
    text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
    tokenizer_2=["transformers", "CLIPTokenizer"],
)


def write_sdxl(kit_dir: Path, seed: int) -> dict[str, str]:
    """Write the tiny SDXL pipeline folder."""
    root = kit_dir / FOLDER
    save_diffusers(random_unet(seed), root / "unet")
    save_diffusers(random_diffusers_model(AutoencoderKL, vae_config(), seed, "sdxl/vae"), root / "vae")
    save_transformers(
        random_transformers_model(CLIPTextModel, text_config("quick_gelu"), seed, "sdxl/text_encoder"),
        root / "text_encoder",
    )
    save_transformers(
        random_transformers_model(
            CLIPTextModelWithProjection, text_config("gelu"), seed, "sdxl/text_encoder_2"
        ),
        root / "text_encoder_2",
    )
    tokenizer.write_tokenizer(root / "tokenizer")
    tokenizer.write_tokenizer(root / "tokenizer_2", pad_token="!")
    write_pipeline_files(
        root,
        SCHEDULER_CONFIG,
        MODEL_INDEX,
        "Tiny SDXL (StableDiffusionXLPipeline folder, SDXL block structure, cross width 128).",
        seed,
    )
    return {"sdxl": FOLDER}
