"""Shared helpers for the faces tests: synthetic square "faces", the kit packs, expected boxes and keypoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from idforge.faces.kitpacks import KPS_FRACTIONS, write_face_packs


def square_image(width: int, height: int, squares, background: int = 0) -> np.ndarray:
    """RGB uint8 image with filled squares [(x0, y0, x1, y1, value_or_rgb_or_array), ...] on `background`."""
    img = np.full((height, width, 3), background, dtype=np.uint8)
    for x0, y0, x1, y1, value in squares:
        img[y0:y1, x0:x1] = value
    return img


def textured(side: int, kind: str) -> np.ndarray:
    """A bright (>= 210) texture so the kit detector still sees one square: stripes or checks."""
    yy, xx = np.mgrid[:side, :side]
    if kind == "stripes":
        plane = np.where((xx // 6) % 2 == 0, 255, 215)
    elif kind == "checks":
        plane = np.where(((xx // 10) + (yy // 10)) % 2 == 0, 255, 215)
    else:
        plane = np.full((side, side), 255)
    rgb = np.stack([plane, np.roll(plane, 3, axis=0), plane], axis=-1)
    return rgb.astype(np.uint8)


def expected_kps(box) -> np.ndarray:
    """The kit detector's keypoints for a box (x0, y0, x1, y1), see kitpacks' docstring."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array(
        [[x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)] for fx, fy in KPS_FRACTIONS], dtype=np.float64
    )


@pytest.fixture(scope="session")
def kit_packs(tmp_path_factory) -> dict[str, Path]:
    return write_face_packs(tmp_path_factory.mktemp("facepacks"), seed=0)


@pytest.fixture(scope="session")
def antelope(kit_packs):
    from idforge.faces.analysis import FaceAnalyzer

    return FaceAnalyzer(kit_packs["antelopev2"])


@pytest.fixture(scope="session")
def buffalo(kit_packs):
    from idforge.faces.analysis import FaceAnalyzer

    return FaceAnalyzer(kit_packs["buffalo_l"])
