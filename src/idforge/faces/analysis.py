"""Face analysis: detect, pick and embed faces with an insightface-format model pack on onnxruntime.

`FaceAnalyzer.analyze` is a pure function of (image pixels, det_size), so its results can be cached by image
content. `get_face` adds what generation needs: the fallback detection sizes 640, 576, ..., 192 for close-ups,
a last try on the image padded by 25% on every side for faces cut by the frame, and the face choice policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from idforge.errors import ModelFormatError, NoFaceError, ParameterError
from idforge.faces.embed import normalize
from idforge.faces.pack import FacePack, load_pack
from idforge.imageio import ImageSource, load_image, pil_to_bgr

Pick = str | int
FALLBACK_SIZES = tuple(range(640, 191, -64))  # 640, 576, ..., 192
PAD_FRACTION = 0.25
PICK_POLICIES = ("largest", "score")


@dataclass
class Face:
    """One detected face in image pixel coordinates."""

    bbox: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    kps: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left mouth corner, right mouth corner
    embedding: np.ndarray  # (512,) float32, raw (InstantID uses this)
    normed_embedding: np.ndarray  # (512,) float32, unit length (FaceID uses this)
    det_size: int
    padded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))

    @property
    def embedding_norm(self) -> float:
        return float(np.linalg.norm(self.embedding))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary: bbox, score, kps, embedding_norm (floats rounded to 4 decimals)."""
        return {
            "bbox": [round(float(v), 4) for v in self.bbox],
            "score": round(float(self.score), 4),
            "kps": [[round(float(x), 4), round(float(y), 4)] for x, y in np.asarray(self.kps).reshape(-1, 2)],
            "embedding_norm": round(self.embedding_norm, 4),
        }


def fallback_sizes(det_size: int, largest_stride: int = 32) -> list[int]:
    """det_size, then the smaller standard sizes (576, 512, ..., 192) that the detector's strides divide."""
    sizes = [det_size]
    sizes += [size for size in FALLBACK_SIZES if size < det_size and size % largest_stride == 0]
    return sizes


def pick_index(faces: Sequence[Face], pick: Pick, name: str = "image") -> int:
    """Index of the chosen face: `largest` box area, highest `score`, or an index in left-to-right order."""
    if not faces:
        raise NoFaceError(name, [])
    if isinstance(pick, (int, np.integer)) and not isinstance(pick, bool):
        if not -len(faces) <= int(pick) < len(faces):
            raise ParameterError(
                "pick", f"face index {int(pick)} is out of range: {name} has {len(faces)} face(s)"
            )
        return int(pick) % len(faces)
    if isinstance(pick, str) and pick.lstrip("-").isdigit():
        return pick_index(faces, int(pick), name)
    if pick == "largest":
        areas = [face.area for face in faces]
        return int(np.argmax(areas))  # first of equal areas, i.e. the left-most
    if pick == "score":
        return int(np.argmax([face.score for face in faces]))
    raise ParameterError("pick", f"{pick!r} is not one of 'largest', 'score' or a face index")


class FaceAnalyzer:
    """A loaded face pack (one onnxruntime session per model) with detection, choice and embedding."""

    def __init__(self, pack_dir: str | Path, providers: str | Sequence[str] | None = None) -> None:
        self.pack: FacePack = load_pack(pack_dir, providers)
        self.pack_dir = Path(pack_dir)
        self.detector = self.pack.detector
        self.recognizer = self.pack.recognizer
        if not self.detector.layout.use_kps:
            raise ModelFormatError(
                f"{self.pack.files.detector}: this detector has no keypoint outputs; face alignment and "
                "recognition need an SCRFD detector with keypoints (9 or 15 outputs, e.g. scrfd_10g_bnkps.onnx)"
            )
        self.largest_stride = max(self.detector.layout.strides)

    def _check_det_size(self, det_size: int) -> int:
        if isinstance(det_size, bool) or not isinstance(det_size, (int, np.integer)):
            raise ParameterError("det_size", f"{det_size!r} is not an integer")
        if self.detector.static_size is not None:
            return int(self.detector.static_size[0])
        if det_size < self.largest_stride or det_size > 4096 or det_size % self.largest_stride:
            raise ParameterError(
                "det_size",
                f"{det_size} must be a multiple of {self.largest_stride} between {self.largest_stride} and 4096",
            )
        return int(det_size)

    def _detect(self, bgr: np.ndarray, det_size: int) -> tuple[np.ndarray, np.ndarray]:
        dets, kps = self.detector.detect(bgr, det_size)
        assert kps is not None
        return dets, kps

    def _faces(
        self,
        bgr: np.ndarray,
        dets: np.ndarray,
        kps: np.ndarray,
        det_size: int,
        *,
        embed: bool = True,
        offset: tuple[float, float] = (0.0, 0.0),
    ) -> list[Face]:
        """Faces sorted left to right (then top to bottom), moved by -offset into `bgr` coordinates."""
        shift = np.asarray(offset, dtype=np.float32)
        faces = []
        for det, points in zip(dets, kps, strict=True):
            face = Face(
                bbox=(det[:4] - np.tile(shift, 2)).astype(np.float32),
                score=float(det[4]),
                kps=(points - shift).astype(np.float32),
                embedding=np.zeros(0, dtype=np.float32),
                normed_embedding=np.zeros(0, dtype=np.float32),
                det_size=int(det_size),
                padded=bool(shift.any()),
            )
            if embed:
                self.embed(bgr, face)
            faces.append(face)
        faces.sort(key=lambda face: (float(face.bbox[0]), float(face.bbox[1])))
        return faces

    def embed(self, bgr: np.ndarray, face: Face) -> Face:
        """Fill `face.embedding` and `face.normed_embedding` from the aligned crop of `bgr` (uint8 BGR)."""
        face.embedding = self.recognizer.embed(bgr, face.kps)
        face.normed_embedding = normalize(face.embedding)
        return face

    def analyze(self, image: ImageSource, *, det_size: int = 640, name: str = "image") -> list[Face]:
        """Every face found at `det_size`, left to right, each with its raw and normalised embedding."""
        size = self._check_det_size(det_size)
        bgr = pil_to_bgr(load_image(image, name=name))
        dets, kps = self._detect(bgr, size)
        return self._faces(bgr, dets, kps, size)

    def _search(
        self, bgr: np.ndarray, det_size: int, fallback: bool, embed: bool
    ) -> tuple[list[Face], list[int], bool]:
        """Faces at the first size that finds any; also the sizes tried and whether the padded retry ran."""
        size = self._check_det_size(det_size)
        static = self.detector.static_size is not None
        sizes = fallback_sizes(size, self.largest_stride) if fallback and not static else [size]
        for index, current in enumerate(sizes):
            dets, kps = self._detect(bgr, current)
            if len(dets):
                return self._faces(bgr, dets, kps, current, embed=embed), sizes[: index + 1], False
        if not fallback:
            return [], sizes, False
        height, width = bgr.shape[:2]
        pad_x, pad_y = int(round(PAD_FRACTION * width)), int(round(PAD_FRACTION * height))
        padded = np.zeros((height + 2 * pad_y, width + 2 * pad_x, 3), dtype=np.uint8)
        padded[pad_y : pad_y + height, pad_x : pad_x + width] = bgr
        dets, kps = self._detect(padded, size)
        faces = self._faces(bgr, dets, kps, size, embed=embed, offset=(pad_x, pad_y)) if len(dets) else []
        return faces, sizes, True

    def find_faces(
        self, image: ImageSource, *, det_size: int = 640, fallback: bool = True, name: str = "image"
    ) -> list[Face]:
        """All faces at the first detection size that finds any (fallback sizes, then 25% padding); may be empty."""
        bgr = pil_to_bgr(load_image(image, name=name))
        return self._search(bgr, det_size, fallback, embed=True)[0]

    def detect_faces(
        self, image: ImageSource, *, det_size: int = 640, fallback: bool = True, name: str = "image"
    ) -> tuple[list[Face], list[int]]:
        """Faces without embeddings (boxes, scores, keypoints) and the detection sizes tried: for checks."""
        bgr = pil_to_bgr(load_image(image, name=name))
        faces, sizes, _ = self._search(bgr, det_size, fallback, embed=False)
        return faces, sizes

    def get_face(
        self,
        image: ImageSource,
        *,
        pick: Pick = "largest",
        det_size: int = 640,
        fallback: bool = True,
        name: str = "image",
    ) -> Face:
        """The chosen face, embedded; raises NoFaceError listing every detection size tried."""
        bgr = pil_to_bgr(load_image(image, name=name))
        faces, sizes, padded = self._search(bgr, det_size, fallback, embed=False)
        if not faces:
            extra = f"also tried at {sizes[0]} with the image padded by 25% on every side" if padded else ""
            raise NoFaceError(name, sizes, extra)
        return self.embed(bgr, faces[pick_index(faces, pick, name)])
