"""Drawings: the IdentityNet keypoint image (`draw_kps`) and an annotated preview (`draw_faces`).

`draw_kps` must match the image InstantID's IdentityNet was trained on, so it follows SPEC.md section 1 to the
pixel: limbs from every keypoint to the nose as filled `cv2.ellipse2Poly` polygons (half-length, width 4),
dimmed x0.6, then full-colour filled circles of radius 10 on the keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from idforge.faces.analysis import Face

KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_WIDTH = 4
LIMB_DIM = 0.6
POINT_RADIUS = 10


def _canvas_size(image_size_or_image: Image.Image | np.ndarray | Sequence[int]) -> tuple[int, int]:
    """(width, height) from a PIL image, an (H, W[, C]) array, or a (width, height) pair."""
    if isinstance(image_size_or_image, Image.Image):
        return image_size_or_image.size
    if isinstance(image_size_or_image, np.ndarray):
        return int(image_size_or_image.shape[1]), int(image_size_or_image.shape[0])
    width, height = image_size_or_image
    return int(width), int(height)


def draw_kps(image_size_or_image: Image.Image | np.ndarray | Sequence[int], kps: np.ndarray) -> Image.Image:
    """The keypoint image for IdentityNet: black canvas of the source size, RGB colours by keypoint index."""
    width, height = _canvas_size(image_size_or_image)
    points = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for start, end in LIMBS:
        xs = points[[start, end], 0]
        ys = points[[start, end], 1]
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), LIMB_WIDTH), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, KPS_COLORS[start])
    out = (canvas * LIMB_DIM).astype(np.uint8)
    for index, (x, y) in enumerate(points):
        cv2.circle(out, (int(x), int(y)), POINT_RADIUS, KPS_COLORS[index], -1)
    return Image.fromarray(out, mode="RGB")


def draw_faces(image: Image.Image, faces: Sequence[Face], picked: int | None = None) -> Image.Image:
    """A copy of `image` with each face's box (the picked one in green, others red), index and keypoints."""
    out = image.convert("RGB").copy()
    pen = ImageDraw.Draw(out)
    line = max(2, round(max(out.size) / 400))
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = (float(v) for v in face.bbox)
        color = (0, 255, 0) if index == picked else (255, 0, 0)
        pen.rectangle([x1, y1, x2, y2], outline=color, width=line)
        pen.text((x1 + 3, max(0.0, y1 - 12)), f"{index}", fill=color)
        radius = max(2, line)
        for point_index, (x, y) in enumerate(np.asarray(face.kps).reshape(-1, 2)):
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=KPS_COLORS[point_index % 5])
    return out
