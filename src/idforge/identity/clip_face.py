"""CLIP vision features of the aligned face, for FaceID plus / plusv2 (SPEC.md section 3).

The face is aligned with the faces module's `norm_crop` at 224 (SD1.5) or 256 (SDXL), then goes through the
usual CLIP preprocessing (short side to 224, centre crop, CLIP mean/std); the projection reads the penultimate
hidden states (B, 257, hidden). The unconditional input is `image_negative` if given, else a black image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from idforge.errors import InputImageError

SD15_CROP = 224
SDXL_CROP = 256


def crop_size_for(cross_dim: int) -> int:
    """Face crop size: 256 for SDXL-width adapters (2048), else 224."""
    return SDXL_CROP if cross_dim == 2048 else SD15_CROP


def face_crops(images_rgb: Sequence[np.ndarray], kps: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """Aligned RGB face crops (size x size) from images and their 5-point keypoints, via faces.align.norm_crop."""
    from idforge.faces.align import (
        norm_crop,  # written by the faces helper; imported late so this module stands alone
    )

    if len(images_rgb) != len(kps):
        raise InputImageError("face images", f"{len(images_rgb)} images but {len(kps)} keypoint sets")
    return [
        np.asarray(norm_crop(img, np.asarray(k, dtype=np.float32), size))
        for img, k in zip(images_rgb, kps, strict=True)
    ]


def _as_pil(image: np.ndarray | Image.Image, name: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InputImageError(name, f"expected an RGB uint8 array (H, W, 3), got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def clip_face_inputs(crop_images: Sequence[np.ndarray | Image.Image], processor) -> torch.Tensor:
    """CLIP pixel values (B, 3, 224, 224) for RGB face crops, via a transformers CLIPImageProcessor."""
    if not crop_images:
        raise InputImageError("face crops", "no crops given")
    images = [_as_pil(img, f"face crop {i}") for i, img in enumerate(crop_images)]
    return processor(images=images, return_tensors="pt").pixel_values


def black_image(size: int) -> np.ndarray:
    return np.zeros((size, size, 3), dtype=np.uint8)


def uncond_clip_inputs(
    processor, size: int, image_negative: np.ndarray | Image.Image | None = None, count: int = 1
) -> torch.Tensor:
    """Pixel values of the unconditional CLIP input: `image_negative`, else a black size x size image."""
    image = image_negative if image_negative is not None else black_image(size)
    return clip_face_inputs([image] * count, processor)


@torch.no_grad()
def encode_clip_penultimate(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states (B, tokens, hidden) of a transformers CLIP vision model."""
    param = next(model.parameters())
    out = model(pixel_values.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
    return out.hidden_states[-2]


def clip_face_features(
    model,
    processor,
    crop_images: Sequence[np.ndarray | Image.Image],
    image_negative: np.ndarray | Image.Image | None = None,
    size: int = SD15_CROP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) penultimate CLIP features for N face crops; uncond has one row per crop."""
    cond = encode_clip_penultimate(model, clip_face_inputs(crop_images, processor))
    uncond_one = encode_clip_penultimate(model, uncond_clip_inputs(processor, size, image_negative))
    return cond, uncond_one.expand(cond.shape[0], -1, -1).clone()
