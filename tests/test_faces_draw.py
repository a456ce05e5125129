"""draw_kps follows SPEC.md section 1 to the pixel: colours, limbs dimmed x0.6, circles of radius 10."""

from __future__ import annotations

import numpy as np
from PIL import Image

from idforge.faces.draw import KPS_COLORS, draw_faces, draw_kps

KPS = np.array([[60.0, 70.0], [140.0, 70.0], [100.0, 120.0], [70.0, 170.0], [130.0, 170.0]])


def test_canvas_size_from_size_image_or_array():
    assert draw_kps((200, 240), KPS).size == (200, 240)
    assert draw_kps(Image.new("RGB", (201, 241)), KPS).size == (201, 241)
    assert draw_kps(np.zeros((242, 202, 3), np.uint8), KPS).size == (202, 242)


def test_keypoint_colours_and_circle_radius():
    out = np.asarray(draw_kps((200, 240), KPS))
    assert out.dtype == np.uint8 and out.shape == (240, 200, 3)
    for (x, y), color in zip(KPS.astype(int), KPS_COLORS, strict=True):
        assert out[y, x].tolist() == list(color)
        assert out[y, x + 10].tolist() == list(color)  # radius 10 reaches here
        assert out[y + 7, x + 7].tolist() == list(color)
    # Just outside a circle that no limb crosses there: black.
    assert out[70 - 12, 60].tolist() == [0, 0, 0]


def test_limbs_are_dimmed_and_coloured_by_their_first_point():
    out = np.asarray(draw_kps((200, 240), KPS))
    # Mid-way along limb 0 -> 2 ((60,70) to (100,120)), outside both circles: 0.6 x red.
    assert out[95, 80].tolist() == [int(255 * 0.6), 0, 0]
    # Limb 1 -> 2 (green), limb 3 -> 2 (yellow), limb 4 -> 2 (magenta)
    assert out[95, 120].tolist() == [0, int(255 * 0.6), 0]
    assert out[145, 85].tolist() == [int(255 * 0.6), int(255 * 0.6), 0]
    assert out[145, 115].tolist() == [int(255 * 0.6), 0, int(255 * 0.6)]
    # Limb width is 4 on each side of the axis: 7 px off the axis is black.
    assert out[95 + 6, 80 - 5].tolist() == [0, 0, 0]


def test_matches_an_independent_opencv_construction():
    import math

    import cv2

    canvas = np.zeros((240, 200, 3), np.float64)
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):
        xs, ys = KPS[[a, b], 0], KPS[[a, b], 1]
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, KPS_COLORS[a])
    expected = (canvas * 0.6).astype(np.uint8)
    for (x, y), color in zip(KPS, KPS_COLORS, strict=True):
        cv2.circle(expected, (int(x), int(y)), 10, color, -1)
    np.testing.assert_array_equal(np.asarray(draw_kps((200, 240), KPS)), expected)


def test_draw_faces_marks_boxes():
    from idforge.faces.analysis import Face

    face = Face(
        np.array([20, 30, 120, 150], np.float32),
        0.9,
        KPS.astype(np.float32) / 2,
        np.ones(512),
        np.ones(512),
        640,
    )
    image = Image.new("RGB", (200, 200), (10, 10, 10))
    out = np.asarray(draw_faces(image, [face], picked=0))
    assert out[30, 70].tolist() == [0, 255, 0]  # top edge of the picked (green) box
    out_other = np.asarray(draw_faces(image, [face], picked=None))
    assert out_other[30, 70].tolist() == [255, 0, 0]
    assert np.asarray(image)[30, 70].tolist() == [10, 10, 10]  # the input is not modified
