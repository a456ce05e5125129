"""Identity scores on a finished generation: every method calls `attach_identity` on its result.

The references are the method's own reference faces, re-embedded with the scoring pack (the same pack must embed
both sides for the cosine to mean anything). The default scoring pack is the one that conditioned the generation
(always present); `GenerationParams.score_models` names another one, which is the honest choice (SPEC.md 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from idforge.engine.inputs import ImageInput, ImageSource, load_named
from idforge.engine.result import GenerationResult
from idforge.engine.session import Engine
from idforge.errors import NoFaceError, face_input
from idforge.faces.scoring import (
    IdentityReport,
    ReferenceEmbedding,
    no_reference_report,
    reference_embedding_from_faces,
    score_images,
)


def engine_reference(
    engine: Engine,
    analyzer,
    references: Sequence[ImageInput],
    *,
    pick: str | int,
    det_size: int,
) -> ReferenceEmbedding:
    """The references' mean normed embedding with `analyzer`, through the engine's face cache."""
    faces, names = [], []
    for index, source in enumerate(references):
        named = load_named(source, face_input(index))
        faces.append(
            engine.analyze_face(analyzer, named.image, name=named.name, pick=pick, det_size=det_size)
        )
        names.append(named.name)
    return reference_embedding_from_faces(analyzer, faces, names)


def identity_report(
    engine: Engine,
    images: Sequence[ImageSource],
    references: Sequence[ImageInput],
    *,
    generation_pack: str | None,
    default_pack: str,
    score_models: str | None,
    pick: str | int,
    det_size: int = 640,
) -> IdentityReport:
    """Score `images` against `references` with the scoring pack (score_models, else the generation's pack)."""
    generation = engine.face_analyzer(generation_pack, default=default_pack)
    analyzer = engine.face_analyzer(score_models, default=default_pack) if score_models else generation
    same = analyzer.pack_dir.resolve() == generation.pack_dir.resolve()
    try:
        reference = engine_reference(engine, analyzer, references, pick=pick, det_size=det_size)
    except NoFaceError as exc:
        return no_reference_report(analyzer, len(images), exc, same)
    return score_images(analyzer, images, reference, same_pack_as_generation=same)


def attach_identity(
    engine: Engine,
    result: GenerationResult,
    references: Sequence[ImageInput],
    *,
    generation_pack: str | None,
    default_pack: str,
    pick: str | int,
    per_image_references: Sequence[Sequence[ImageInput]] | None = None,
) -> GenerationResult:
    """Score every image of `result` (unless the generation asked for no scoring) into result.identity and
    result.recipe["identity"]. `per_image_references` (FaceID batch mode): image i is scored against its own
    references only."""
    gen_params = result.recipe.get("params", {})
    if not gen_params.get("score", True):
        return result
    options = dict(
        generation_pack=generation_pack,
        default_pack=default_pack,
        score_models=gen_params.get("score_models"),
        pick=pick,
    )
    if per_image_references is None:
        report = identity_report(engine, result.images, references, **options)
    else:
        parts = [
            identity_report(engine, [image], refs, **options)
            for image, refs in zip(result.images, per_image_references, strict=True)
        ]
        report = parts[0]
        report.images = [part.images[0] for part in parts]
        report.reference = "per image: mean of normed embeddings of the reference that conditioned it"
    result.identity = report
    result.recipe["identity"] = report.to_json()
    return result


def reference_advice(
    engine: Engine, analyzer, image, *, name: str, pick: str | int, det_size: int
) -> list[str]:
    """The reference check's advice for one reference photo, as warnings ("NAME: face is 80 px ..."),
    cached by content like the face analysis itself."""
    from idforge.engine.session import image_digest
    from idforge.faces.quality import check_reference

    key = ("reference-check", id(analyzer), image_digest(image), str(pick), det_size)
    check = engine.face_cache.get(key)
    if check is None:
        check = check_reference(analyzer, image, name=name, pick=pick, det_size=det_size)
        engine.face_cache.put(key, check)
    return [f"{name}: {advice}" for advice in check.advice]
