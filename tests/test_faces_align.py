"""Alignment: the similarity maps keypoints onto the ArcFace template at every crop size, like insightface's."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from idforge.faces.align import ARCFACE_TEMPLATE, estimate_norm, norm_crop, template_for, umeyama


def _similar_points(size: int, angle_deg: float, scale: float, shift) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints that are an exact similarity image of the template for `size`, and that template."""
    dst = template_for(size).astype(np.float64)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    src = (dst @ rot.T) * scale + np.asarray(shift)
    return src.astype(np.float32), dst


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]


def test_templates():
    np.testing.assert_allclose(template_for(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)
    t128 = ARCFACE_TEMPLATE.astype(np.float64).copy()
    t128[:, 0] += 8.0
    np.testing.assert_allclose(template_for(128), t128, rtol=1e-6)
    t256 = ARCFACE_TEMPLATE.astype(np.float64) * 2
    t256[:, 0] += 16.0
    np.testing.assert_allclose(template_for(256), t256, rtol=1e-6)


@pytest.mark.parametrize("size", [112, 224, 256, 128])
def test_estimate_norm_maps_keypoints_onto_the_template(size):
    src, dst = _similar_points(size, angle_deg=-23.0, scale=2.7, shift=(310.0, 120.0))
    matrix = estimate_norm(src, size)
    assert matrix.shape == (2, 3)
    residual = np.abs(_apply(matrix, src) - dst).max()
    assert residual < 1e-3  # float32 keypoints in, exact similarity


@pytest.mark.parametrize("size", [112, 224, 256, 128])
def test_estimate_norm_matches_skimage(size):
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(size)
    src, _ = _similar_points(size, angle_deg=12.0, scale=1.6, shift=(50.0, 80.0))
    src = (src + rng.normal(0, 2.0, src.shape)).astype(np.float32)  # not an exact similarity any more
    ours = estimate_norm(src, size)
    # skimage computes in the dtype it is given (insightface passes float32); ours always in float64.
    for dtype, tolerance in ((np.float64, 1e-9), (np.float32, 1e-3)):
        reference = SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26 deprecates estimate()
            reference.estimate(src.astype(dtype), template_for(size).astype(dtype))
        np.testing.assert_allclose(ours, reference.params[:2], atol=tolerance)


def test_no_reflection():
    src, _ = _similar_points(112, angle_deg=0.0, scale=1.0, shift=(0.0, 0.0))
    mirrored = src.copy()
    mirrored[:, 0] = -mirrored[:, 0]
    matrix = estimate_norm(mirrored, 112)
    assert np.linalg.det(matrix[:, :2]) > 0
    assert np.linalg.det(umeyama(src, template_for(112))[:2, :2]) > 0


def test_norm_crop_moves_marked_points_to_the_template():
    size = 112
    src, dst = _similar_points(size, angle_deg=15.0, scale=3.0, shift=(200.0, 100.0))
    img = np.zeros((700, 700, 3), dtype=np.uint8)
    for x, y in src:
        img[int(round(y)) - 4 : int(round(y)) + 5, int(round(x)) - 4 : int(round(x)) + 5] = 255
    crop = norm_crop(img, src, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for x, y in dst:
        assert crop[int(round(y)), int(round(x))].min() > 200  # each mark landed on its template point


def test_norm_crop_border_is_black():
    src, _ = _similar_points(112, angle_deg=0.0, scale=1.0, shift=(0.0, 0.0))
    img = np.full((60, 60, 3), 255, dtype=np.uint8)  # the crop extends beyond this small image
    crop = norm_crop(img, src, 112)  # identity: crop pixel (x, y) = image pixel (x, y)
    assert crop[-1, -1].tolist() == [0, 0, 0]
    assert crop[0, 0].tolist() == [255, 255, 255]


def test_bad_keypoints():
    with pytest.raises(ValueError, match="5 keypoints"):
        estimate_norm(np.zeros((4, 2)), 112)
