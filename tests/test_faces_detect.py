"""SCRFD decoding pieces: NMS conventions, anchor layout, layouts by output count, letterbox."""

from __future__ import annotations

import numpy as np

from idforge.faces.detect import anchor_centers, layout_for_outputs, letterbox, nms, static_input_size


def test_nms_uses_plus_one_areas():
    # With +1 areas: intersection 6x10 = 60, union 140, IoU 0.43 > 0.4 -> suppressed.
    # Without: 5x9 = 45 over 117 = 0.38 -> both would be kept.
    dets = np.array([[0, 0, 9, 9, 0.9], [4, 0, 13, 9, 0.8]], dtype=np.float32)
    assert nms(dets, 0.4) == [0]
    dets[1, 0], dets[1, 2] = 5, 14  # IoU 50/150 = 0.33 with +1: kept
    assert nms(dets, 0.4) == [0, 1]


def test_nms_ties_keep_the_earlier_box_and_sorts_by_score():
    dets = np.array(
        [[0, 0, 10, 10, 0.7], [1, 1, 11, 11, 0.9], [0, 1, 10, 11, 0.9], [50, 50, 60, 60, 0.6]],
        dtype=np.float32,
    )
    assert nms(dets, 0.4) == [1, 3]


def test_anchor_centres_layout():
    centers = anchor_centers(2, 3, 8, 2)
    assert centers.shape == (12, 2) and centers.dtype == np.float32
    assert centers[:6].tolist() == [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]]
    assert centers[6].tolist() == [0, 8]
    assert anchor_centers(1, 2, 16, 1).tolist() == [[0, 0], [16, 0]]


def test_layouts_by_output_count():
    assert layout_for_outputs(9).strides == (8, 16, 32) and layout_for_outputs(9).num_anchors == 2
    assert layout_for_outputs(6).use_kps is False
    five = layout_for_outputs(15)
    assert five.strides == (8, 16, 32, 64, 128) and five.num_anchors == 1 and five.use_kps
    assert layout_for_outputs(10).use_kps is False
    assert layout_for_outputs(5) is None and layout_for_outputs(1) is None


def test_static_input_size():
    assert static_input_size([1, 3, 480, 640]) == (640, 480)
    assert static_input_size([1, 3, "?", "?"]) is None
    assert static_input_size(["None", 3, None, 640]) is None


def test_letterbox_keeps_ratio_on_the_top_left():
    img = np.full((100, 200, 3), 255, dtype=np.uint8)
    canvas, scale = letterbox(img, (640, 640))
    assert scale == 3.2 and canvas.shape == (640, 640, 3)
    assert canvas[319, 639].tolist() == [255, 255, 255] and canvas[320, 0].tolist() == [0, 0, 0]
    tall = np.full((300, 100, 3), 255, dtype=np.uint8)
    canvas, scale = letterbox(tall, (640, 640))
    assert canvas[639, 212].tolist() == [255, 255, 255] and canvas[0, 214].tolist() == [0, 0, 0]
    assert scale == 640 / 300
