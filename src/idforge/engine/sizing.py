"""Output size rules and keypoint scaling."""

from __future__ import annotations

import numpy as np


def instantid_size(
    width: int, height: int, min_side: int = 1024, max_side: int = 1280, base: int = 64
) -> tuple[int, int]:
    """InstantID's `resize_img` rule: short side to `min_side`, then the long side to `max_side`, floored to `base`.

    As in the official code the second ratio is always applied, so a square keypoint image gives 1280x1280 and
    never the exact 1024x1024 that produces watermark artefacts.
    """
    ratio = min_side / min(width, height)
    width, height = round(ratio * width), round(ratio * height)
    ratio = max_side / max(width, height)
    width, height = round(ratio * width), round(ratio * height)
    return max(base, width // base * base), max(base, height // base * base)


def scale_kps(kps: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    """Keypoints of a (w, h) image moved onto a (W, H) canvas, as if the image had been resized."""
    sx = target_size[0] / source_size[0]
    sy = target_size[1] / source_size[1]
    return np.asarray(kps, dtype=np.float32) * np.array([sx, sy], dtype=np.float32)


def scale_box(box: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    sx = target_size[0] / source_size[0]
    sy = target_size[1] / source_size[1]
    return np.asarray(box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)


def box_mask(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float32 (H, W) mask that is 1 inside the box: the official demo's "enhance face region"."""
    mask = np.zeros((height, width), dtype=np.float32)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)] = 1.0
    return mask
