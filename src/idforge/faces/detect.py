"""SCRFD face detection on onnxruntime.

Same maths as insightface 2.1's `SCRFD` so that boxes and keypoints agree on the same ONNX file: keep-ratio
resize onto the top-left of a zero canvas, `(x - 127.5) / 128` in RGB order, anchor-centre decoding, score
threshold, a stable sort by score and greedy NMS with "+1" areas. Everything is float32 as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

DET_MEAN = 127.5
DET_STD = 128.0
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4


@dataclass(frozen=True)
class DetectorLayout:
    """What the output count says about an SCRFD graph."""

    strides: tuple[int, ...]
    num_anchors: int
    use_kps: bool


def layout_for_outputs(count: int) -> DetectorLayout | None:
    """6/9 outputs: strides 8, 16, 32 with 2 anchors; 10/15: strides 8..128 with 1 anchor (as insightface)."""
    if count in (6, 9):
        return DetectorLayout((8, 16, 32), 2, count == 9)
    if count in (10, 15):
        return DetectorLayout((8, 16, 32, 64, 128), 1, count == 15)
    return None


def static_input_size(shape: list | tuple) -> tuple[int, int] | None:
    """(width, height) when the NCHW input shape fixes both spatial axes, else None."""
    if shape is None or len(shape) < 4:
        return None
    height, width = shape[2], shape[3]
    if (
        isinstance(height, (int, np.integer))
        and isinstance(width, (int, np.integer))
        and height > 0
        and width > 0
    ):
        return int(width), int(height)
    return None


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """(height*width*num_anchors, 2) float32 centres (x*stride, y*stride), row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).astype(np.float32)
    centers = (centers * stride).reshape(-1, 2)
    if num_anchors > 1:
        centers = np.repeat(centers, num_anchors, axis=0)
    return centers


def nms(dets: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy NMS over (N, 5) [x1, y1, x2, y2, score]; ties keep input order; areas use the +1 convention."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[np.where(overlap <= threshold)[0]]
    return keep


def letterbox(image_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio to fit `size` = (width, height), paste top-left on zeros; return (canvas, scale)."""
    height, width = image_bgr.shape[:2]
    image_ratio = float(height) / width
    model_ratio = float(size[1]) / size[0]
    if image_ratio > model_ratio:
        new_height = size[1]
        new_width = max(
            1, int(new_height / image_ratio)
        )  # a 2x3000 strip must not shrink to 0 px (cv2 fails)
    else:
        new_width = size[0]
        new_height = max(1, int(new_width * image_ratio))
    scale = float(new_height) / height
    resized = cv2.resize(image_bgr, (new_width, new_height))
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    canvas[:new_height, :new_width, :] = resized
    return canvas, scale


class SCRFDDetector:
    """One loaded SCRFD graph. `detect(bgr, det_size)` -> (dets (N, 5) float32, kps (N, 5, 2) float32 or None)."""

    def __init__(self, session: ort.InferenceSession, model_path: str = "") -> None:
        self.session = session
        self.model_path = model_path
        outputs = session.get_outputs()
        layout = layout_for_outputs(len(outputs))
        if layout is None:
            raise ValueError(
                f"{model_path}: {len(outputs)} outputs is not an SCRFD detector (6, 9, 10 or 15)"
            )
        self.layout = layout
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in outputs]
        self.batched = len(outputs[0].shape or ()) == 3
        self.static_size = static_input_size(session.get_inputs()[0].shape)
        self.score_threshold = SCORE_THRESHOLD
        self.nms_threshold = NMS_THRESHOLD
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def input_size_for(self, det_size: int | tuple[int, int]) -> tuple[int, int]:
        """The (width, height) actually used: the model's static size when it has one, else det_size."""
        if self.static_size is not None:
            return self.static_size
        if isinstance(det_size, (tuple, list)):
            return int(det_size[0]), int(det_size[1])
        return int(det_size), int(det_size)

    def _centers_for(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centers:
            self._centers[key] = anchor_centers(height, width, stride, self.layout.num_anchors)
        return self._centers[key]

    def _forward(self, canvas: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Run the graph on a BGR canvas; return per-stride kept scores, boxes and keypoints (canvas pixels)."""
        blob = (canvas[:, :, ::-1].astype(np.float32) - np.float32(DET_MEAN)) * np.float32(1.0 / DET_STD)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[np.newaxis])
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        input_height, input_width = blob.shape[2], blob.shape[3]
        count = len(self.layout.strides)
        scores_list, boxes_list, kps_list = [], [], []
        for index, stride in enumerate(self.layout.strides):
            scores = outputs[index]
            box_dist = outputs[index + count]
            kps_dist = outputs[index + 2 * count] if self.layout.use_kps else None
            if self.batched:
                scores, box_dist = scores[0], box_dist[0]
                kps_dist = kps_dist[0] if kps_dist is not None else None
            box_dist = box_dist * stride
            centers = self._centers_for(input_height // stride, input_width // stride, stride)
            keep = np.where(scores >= self.score_threshold)[0]
            boxes = np.stack(
                [
                    centers[:, 0] - box_dist[:, 0],
                    centers[:, 1] - box_dist[:, 1],
                    centers[:, 0] + box_dist[:, 2],
                    centers[:, 1] + box_dist[:, 3],
                ],
                axis=-1,
            )
            scores_list.append(scores[keep])
            boxes_list.append(boxes[keep])
            if kps_dist is not None:
                kps_dist = kps_dist * stride
                points = kps_dist.reshape(kps_dist.shape[0], -1, 2) + centers[:, np.newaxis, :]
                kps_list.append(points[keep])
        return scores_list, boxes_list, kps_list

    def detect(
        self, image_bgr: np.ndarray, det_size: int | tuple[int, int] = 640
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Faces in a BGR uint8 image, in image coordinates, highest score first (ties: anchor order)."""
        size = self.input_size_for(det_size)
        canvas, scale = letterbox(image_bgr, size)
        scores_list, boxes_list, kps_list = self._forward(canvas)
        use_kps = self.layout.use_kps
        if sum(scores.size for scores in scores_list) == 0:
            return np.empty((0, 5), dtype=np.float32), (np.empty((0, 5, 2), np.float32) if use_kps else None)
        scores = np.vstack(scores_list).ravel()
        order = np.argsort(-scores, kind="stable")
        boxes = np.vstack(boxes_list) / scale
        dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)[order]
        kps = (np.vstack(kps_list) / scale)[order] if use_kps else None
        keep = nms(dets, self.nms_threshold)
        dets = dets[keep]
        if kps is not None:
            kps = kps[keep].astype(np.float32, copy=False)
        return dets, kps
