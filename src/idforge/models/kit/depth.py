"""Tiny Depth Anything (V2 Small layout): DepthAnythingForDepthEstimation with a Dinov2 backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from .builders import random_transformers_model, save_transformers
from .common import write_json, write_readme

FOLDER = "depth/tiny-depth-anything"
INPUT_SIZE = 56  # Depth Anything V2: 518; a multiple of the patch size 14

# Depth Anything V2 Small's preprocessor_config.json, with a small input size.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": INPUT_SIZE, "width": INPUT_SIZE},
    "size_divisor": None,
}


def depth_config() -> DepthAnythingConfig:
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=INPUT_SIZE,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )


def write_depth(kit_dir: Path, seed: int) -> dict[str, str]:
    model = random_transformers_model(DepthAnythingForDepthEstimation, depth_config(), seed, "depth")
    folder = kit_dir / FOLDER
    save_transformers(model, folder)
    write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    write_readme(
        folder, "Tiny Depth Anything (Dinov2 backbone width 32, DPT-style processor, 56 px input).", seed
    )
    return {"depth_estimator": FOLDER}
