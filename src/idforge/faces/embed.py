"""ArcFace recognition on onnxruntime: aligned 112x112 crop -> 512 floats.

Input normalisation follows insightface: graphs exported from MXNet carry their own `Sub`/`Mul` nodes among the
first 8 nodes and take raw pixels (mean 0, std 1); every other graph takes `(x - 127.5) / 127.5`. RGB order.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from idforge.faces.align import norm_crop


def normalisation_from_graph(model: onnx.ModelProto) -> tuple[float, float]:
    """(mean, std) the way insightface decides it: both a Sub-like and a Mul-like node among the first 8 -> (0, 1)."""
    has_sub = False
    has_mul = False
    for node in model.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            has_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            has_mul = True
    if has_sub and has_mul:
        return 0.0, 1.0
    return 127.5, 127.5


class ArcFaceEmbedder:
    """One loaded recogniser. `embed(bgr, kps)` aligns the face and returns its raw embedding (float32)."""

    def __init__(self, session: ort.InferenceSession, mean: float, std: float, model_path: str = "") -> None:
        self.session = session
        self.model_path = model_path
        self.mean = float(mean)
        self.std = float(std)
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = session.get_outputs()[0].name
        self.input_size = int(model_input.shape[3])  # square: checked when the pack is routed

    def embed_crop(self, crop_bgr: np.ndarray) -> np.ndarray:
        """Raw embedding of an already aligned BGR crop of input_size x input_size."""
        rgb = crop_bgr[:, :, ::-1].astype(np.float32)
        blob = (rgb - np.float32(self.mean)) * np.float32(1.0 / self.std)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[np.newaxis])
        output = self.session.run([self.output_name], {self.input_name: blob})[0]
        return np.asarray(output, dtype=np.float32).reshape(-1)

    def embed(self, image_bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """Raw embedding of the face with keypoints `kps` in `image_bgr`."""
        return self.embed_crop(norm_crop(image_bgr, kps, self.input_size))


def normalize(embedding: np.ndarray) -> np.ndarray:
    """embedding / ||embedding|| (zeros stay zeros)."""
    norm = float(np.linalg.norm(embedding))
    if norm == 0.0:
        return embedding.astype(np.float32, copy=True)
    return (embedding / norm).astype(np.float32)
