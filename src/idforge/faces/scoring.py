"""Identity score: how much the face in an image looks like the reference person (SPEC.md section 8).

Score = cosine similarity between the normed ArcFace embedding of the face found in the image and the mean of
the references' normed embeddings (cos(a, m) = a . m / (|a| |m|); |a| = 1). Papers report the same number; good
identity runs about 0.6-0.8 with real packs.

Rules, stated once here and in the recipe:
- the face scored in an image is the one with the **largest box area** (the main subject; InstantID's rule);
  how many faces were found is reported beside it;
- detections whose shorter box side is under MIN_FACE_PX (16 px) are ignored: nobody is recognisable there;
- detection uses the fallback sizes (640, 576, ..., 192, then the image padded by 25%); an image with no face is
  the explicit state `no_face` with the reason and the sizes tried: its score is `None`, never 0;
- reference and image are embedded with the same pack (named in the result); scoring with the pack that conditioned
  the generation flatters the score, so a second pack can be named (`--score-models`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from idforge.errors import NoFaceError
from idforge.faces.analysis import Face, FaceAnalyzer, fallback_sizes
from idforge.imageio import ImageSource, load_image

FACE_CHOICE = "largest"
MIN_FACE_PX = 16  # shorter box side below which no recogniser can tell who it is: such detections are ignored


@dataclass(frozen=True)
class ReferenceEmbedding:
    """The mean of the references' normed embeddings, with the pack that made them."""

    pack: str
    mean: np.ndarray  # (512,) float32, not re-normalised (the cosine divides by its norm)
    embeddings: np.ndarray  # (N, 512) normed, one row per reference
    names: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"mean of normed embeddings of {len(self.names)} references"


@dataclass(frozen=True)
class ImageScore:
    """One image's identity score, or why there is none (`status` "no_face" or "no_reference")."""

    status: str  # "scored" | "no_face" | "no_reference"
    score: float | None = None
    face_index: int | None = None  # index of the scored face, left to right
    box: tuple[float, float, float, float] | None = None
    faces_found: int = 0
    reason: str | None = None
    sizes_tried: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.status == "scored":
            assert self.score is not None and self.box is not None
            return {
                "status": "scored",
                "score": round(float(self.score), 6),
                "face_index": self.face_index,
                "box": [round(float(v), 2) for v in self.box],
                "faces_found": self.faces_found,
            }
        return {
            "status": self.status,
            "score": None,
            "reason": self.reason,
            "sizes_tried": list(self.sizes_tried),
        }

    @property
    def header_value(self) -> str:
        """What the HTTP header `x-identity-score` carries for this image: the score, or `none`."""
        return "none" if self.score is None else f"{self.score:.4f}"


@dataclass
class IdentityReport:
    """Scores of a list of images against one reference: the `identity` object of recipes and results."""

    pack: str
    pack_dir: str
    reference: str
    images: list[ImageScore]
    same_pack_as_generation: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> list[float | None]:
        return [item.score for item in self.images]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pack": self.pack,
            "pack_dir": self.pack_dir,
            "reference": self.reference,
            "face_choice": FACE_CHOICE,
            "images": [item.to_json() for item in self.images],
        }
        if self.same_pack_as_generation is not None:
            data["same_pack_as_generation"] = self.same_pack_as_generation
        return data | self.extra

    def header_value(self) -> str:
        """`x-identity-score`: comma-separated per image, `none` where no face was scored."""
        return ",".join(item.header_value for item in self.images)


def pack_name(analyzer: FaceAnalyzer) -> str:
    return analyzer.pack_dir.name


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; 0-norm vectors give 0.0 (the kit's recogniser never yields one)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64 / denominator) if denominator > 0 else 0.0


def reference_embedding(
    analyzer: FaceAnalyzer,
    images: Sequence[ImageSource],
    names: Sequence[str] | None = None,
    *,
    pick: str | int = "largest",
    det_size: int = 640,
) -> ReferenceEmbedding:
    """Embed every reference (its `pick` face) and average the normed embeddings; raises NoFaceError for a
    reference without a face."""
    names = list(names) if names is not None else [f"reference {i}" for i in range(len(images))]
    faces = [
        analyzer.get_face(image, pick=pick, det_size=det_size, name=name)
        for image, name in zip(images, names, strict=True)
    ]
    return reference_embedding_from_faces(analyzer, faces, names)


def reference_embedding_from_faces(
    analyzer: FaceAnalyzer, faces: Sequence[Face], names: Sequence[str]
) -> ReferenceEmbedding:
    """The mean of already analysed faces' normed embeddings (the faces must come from `analyzer`)."""
    if not faces:
        raise NoFaceError("references", [], "no reference image given")
    stacked = np.stack([np.asarray(face.normed_embedding, dtype=np.float32) for face in faces])
    return ReferenceEmbedding(pack_name(analyzer), stacked.mean(axis=0), stacked, tuple(names))


def score_image(
    analyzer: FaceAnalyzer, image: ImageSource, reference: ReferenceEmbedding, *, det_size: int = 640
) -> ImageScore:
    """The largest face of `image` scored against `reference`, or the `no_face` state with the sizes tried."""
    found = analyzer.find_faces(
        load_image(image, name="scored image"), det_size=det_size, name="scored image"
    )
    faces = [face for face in found if min(face_side(face)) >= MIN_FACE_PX]
    if not faces:
        sizes = fallback_sizes(det_size, analyzer.largest_stride)
        reason = f"no face found in the image (also tried padded by 25%) with pack {reference.pack}"
        if found:
            reason = f"{len(found)} detection(s), all under {MIN_FACE_PX} px (too small to recognise)"
        return ImageScore(status="no_face", reason=reason, sizes_tried=tuple(sizes))
    face = faces[int(np.argmax([face.area for face in faces]))]
    index = next(i for i, candidate in enumerate(found) if candidate is face)
    return ImageScore(
        status="scored",
        score=cosine(face.normed_embedding, reference.mean),
        face_index=index,
        box=tuple(float(v) for v in face.bbox),
        faces_found=len(found),
    )


def face_side(face: Face) -> tuple[float, float]:
    """(width, height) of a face box in pixels."""
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    return x2 - x1, y2 - y1


def score_images(
    analyzer: FaceAnalyzer,
    images: Sequence[ImageSource],
    reference: ReferenceEmbedding,
    *,
    det_size: int = 640,
    same_pack_as_generation: bool | None = None,
) -> IdentityReport:
    """Every image scored against one reference: the `identity` report."""
    return IdentityReport(
        pack=reference.pack,
        pack_dir=str(analyzer.pack_dir),
        reference=reference.description,
        images=[score_image(analyzer, image, reference, det_size=det_size) for image in images],
        same_pack_as_generation=same_pack_as_generation,
    )


def no_reference_report(
    analyzer: FaceAnalyzer, count: int, error: NoFaceError, same_pack: bool | None
) -> IdentityReport:
    """The report when the scoring pack finds no face in a reference: every image `no_reference`, with why."""
    item = ImageScore(status="no_reference", reason=str(error), sizes_tried=tuple(error.sizes_tried))
    return IdentityReport(
        pack=pack_name(analyzer),
        pack_dir=str(analyzer.pack_dir),
        reference="none: a reference has no face for this pack",
        images=[item] * count,
        same_pack_as_generation=same_pack,
    )
