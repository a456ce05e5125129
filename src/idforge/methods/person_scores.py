"""One identity score per person in a multi-person image: output faces matched to persons by position.

Rules (stated in the recipe's `identity` object too):
- each person's reference is the mean of the normed embeddings of that person's own faces, with the scoring pack;
- the faces of each output image are found once (faces/scoring's detection rules, detections under 16 px
  ignored); a person's face is the largest one whose box centre lies in the person's region; none there is the
  explicit `no_face` state for that person, never a 0;
- the image's own entry (what the `x-identity-score` header and best-of-N read) is the **lowest** person score:
  a group picture is only as good as its worst likeness; it is `no_face` when any person has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from idforge.engine.scoring import engine_reference
from idforge.engine.session import Engine
from idforge.errors import NoFaceError
from idforge.faces.analysis import fallback_sizes
from idforge.faces.scoring import (
    MIN_FACE_PX,
    IdentityReport,
    ImageScore,
    ReferenceEmbedding,
    cosine,
    face_side,
    pack_name,
)
from idforge.methods.persons import Person, pick_in_region

FACE_CHOICE = "per person: the largest face whose box centre lies in the person's region"
IMAGE_SCORE_RULE = "lowest person score (no_face when any person has none)"


def score_persons(
    engine: Engine,
    images: Sequence[Image.Image],
    persons: Sequence[Person],
    regions: Sequence[np.ndarray],
    *,
    pick: str | int,
    generation_pack: str | None,
    default_pack: str,
    score_models: str | None,
    det_size: int = 640,
) -> IdentityReport:
    """Every person scored in every image; the report's per-image entries combine them (the lowest).
    `regions` are the persons' 0/1 masks at the images' size."""
    generation = engine.face_analyzer(generation_pack, default=default_pack)
    analyzer = engine.face_analyzer(score_models, default=default_pack) if score_models else generation
    same = analyzer.pack_dir.resolve() == generation.pack_dir.resolve()
    labels = [f"person {index}" for index in range(1, len(persons) + 1)]
    references: list[ReferenceEmbedding | NoFaceError] = []  # a person without a face scores no_reference
    for person in persons:
        try:
            references.append(engine_reference(engine, analyzer, person.faces, pick=pick, det_size=det_size))
        except NoFaceError as exc:
            references.append(exc)

    per_person: list[list[ImageScore]] = [[] for _ in persons]
    for image in images:
        found = analyzer.find_faces(image, det_size=det_size, name="scored image")
        usable = [index for index, face in enumerate(found) if min(face_side(face)) >= MIN_FACE_PX]
        boxes = [found[index].bbox for index in usable]
        for slot, reference in enumerate(references):
            where = f"{labels[slot]}'s region ({persons[slot].region_text()})"
            per_person[slot].append(
                _person_score(analyzer, found, usable, boxes, regions[slot], where, reference, det_size)
            )

    combined = [_lowest([scores[i] for scores in per_person], labels) for i in range(len(images))]
    return IdentityReport(
        pack=pack_name(analyzer),
        pack_dir=str(analyzer.pack_dir),
        reference="per person: mean of normed embeddings of that person's references",
        images=combined,
        same_pack_as_generation=same,
        extra={
            "face_choice": FACE_CHOICE,
            "image_score": IMAGE_SCORE_RULE,
            "persons": [
                {
                    "label": label,
                    "reference": reference.description if not isinstance(reference, Exception) else None,
                    "images": [score.to_json() for score in scores],
                }
                for label, reference, scores in zip(labels, references, per_person, strict=True)
            ],
        },
    )


def _person_score(
    analyzer: Any,
    found: Sequence[Any],
    usable: Sequence[int],
    boxes: Sequence[np.ndarray],
    region: np.ndarray,
    where: str,
    reference: ReferenceEmbedding | NoFaceError,
    det_size: int,
) -> ImageScore:
    if isinstance(reference, NoFaceError):
        return ImageScore(
            status="no_reference", reason=str(reference), sizes_tried=tuple(reference.sizes_tried)
        )
    chosen = pick_in_region(region, boxes)
    if chosen is None:
        reason = f"no face with its centre in {where}; {len(found)} face(s) in the image with pack {reference.pack}"
        sizes = tuple(fallback_sizes(det_size, analyzer.largest_stride))
        return ImageScore(status="no_face", reason=reason, sizes_tried=sizes)
    face = found[usable[chosen]]
    return ImageScore(
        status="scored",
        score=cosine(face.normed_embedding, reference.mean),
        face_index=usable[chosen],
        box=_box(face.bbox),
        faces_found=len(found),
    )


def _box(bbox: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return x1, y1, x2, y2


def _lowest(scores: Sequence[ImageScore], labels: Sequence[str]) -> ImageScore:
    """The image's entry: the lowest person score, or the first person's missing state, naming the person."""
    for score, label in zip(scores, labels, strict=True):
        if score.status != "scored":
            return ImageScore(
                status=score.status,
                reason=f"{label}: {score.reason}",
                sizes_tried=score.sizes_tried,
            )
    return min(scores, key=lambda score: float(score.score))  # type: ignore[arg-type]
