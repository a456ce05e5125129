"""`generate_instantid`: InstantID end to end (the flow is in methods/instantid/core.py's docstring); several
people go through methods/instantid/persons.py."""

from __future__ import annotations

import time

from idforge.engine.recipe import Recipe
from idforge.engine.result import GenerationResult
from idforge.engine.scoring import attach_identity
from idforge.engine.session import Engine
from idforge.methods.instantid.core import (
    IdentityRun,
    InstantIDRequest,
    PreparedInstantID,
    ProgressCallback,
    instantid_recipe,
    load_instantid_models,
    load_request_images,
    prepare_instantid,
    run_identity_generation,
)


def generate_instantid(
    engine: Engine, request: InstantIDRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Run InstantID end to end and return images with their recipe (several people: methods/instantid/persons.py)."""
    if request.generation.best_of > 1:
        from idforge.methods.best_of import generate_best_of

        return generate_best_of(engine, generate_instantid, request, progress)
    if request.persons:
        from idforge.methods.instantid.persons import generate_persons

        return generate_persons(engine, request, progress)
    started = time.perf_counter()
    request = load_request_images(request)
    models = load_instantid_models(engine, request.base, request.instantid_model)
    prepared = prepare_instantid(engine, request, models.projection)
    run = run_identity_generation(
        engine, models, prepared, request.generation, request.instantid, request.mask, progress=progress
    )
    recipe = instantid_recipe(engine, request, models, prepared, run, started)
    return instantid_result(engine, request, prepared, run, recipe)


def instantid_result(
    engine: Engine, request: InstantIDRequest, prepared: PreparedInstantID, run: IdentityRun, recipe: Recipe
) -> GenerationResult:
    """One InstantID image set as delivered: images, recipe, the keypoint image, and the identity score against
    the request's references (alone or one job of a shared batch pass alike)."""
    result = GenerationResult(
        images=run.images,
        seeds=run.seeds,
        recipe=recipe.to_dict(),
        extras={"kps_image": prepared.kps_image},
        warnings=list(prepared.warnings),
        latents=run.latents,
    )
    return attach_identity(
        engine,
        result,
        request.faces,
        generation_pack=request.face_models,
        default_pack="antelopev2",
        pick=request.instantid.pick,
    )
