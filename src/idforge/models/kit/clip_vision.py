"""Tiny CLIP ViT-H/14 image encoder: a CLIPVisionModelWithProjection folder and ComfyUI's single file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .builders import random_transformers_model, save_transformers
from .common import write_json, write_readme

FOLDER = "clip_vision/tiny-clip-vit-h"
COMFY_FILE = "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
HIDDEN = 64  # ViT-H: 1280; FaceID Plus's perceiver proj_in reads this width
IMAGE_SIZE = 224
PATCH_SIZE = 14  # 16 x 16 patches + class token = 257 tokens, as ViT-H/14

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": IMAGE_SIZE},
}


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def write_clip_vision(kit_dir: Path, seed: int) -> dict[str, str]:
    """The transformers folder and the same weights as one file where ComfyUI keeps them."""
    model = random_transformers_model(CLIPVisionModelWithProjection, vision_config(), seed, "clip_vision")
    folder = kit_dir / FOLDER
    save_transformers(model, folder)
    write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    shutil.copyfile(folder / "model.safetensors", kit_dir / COMFY_FILE)
    write_readme(
        folder, "Tiny CLIP ViT-H/14 image encoder (224 px, 257 tokens of width 64, projection 64).", seed
    )
    return {"clip_vision": FOLDER, "comfy_clip_vision": COMFY_FILE}
