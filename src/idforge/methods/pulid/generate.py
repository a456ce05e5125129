"""`generate_pulid`: PuLID end to end (the flow is in methods/pulid/core.py's docstring)."""

from __future__ import annotations

import time
from typing import Any

from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.recipe import PassLayout
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.scoring import attach_identity
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.identity.attention import attach_prepared
from idforge.imageio import load_mask
from idforge.methods.pulid.core import (
    ProgressCallback,
    PulidRequest,
    decode_inputs,
    load_pulid_models,
    prepare_pulid,
    pulid_output_size,
    pulid_recipe,
)


def generate_pulid(
    engine: Engine, request: PulidRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Run PuLID and return images with their recipe and identity scores."""
    started = time.perf_counter()
    gen, params = request.generation, request.pulid
    if gen.best_of > 1:
        from idforge.methods.best_of import generate_best_of

        return generate_best_of(engine, generate_pulid, request, progress)
    if request.persons:
        from idforge.methods.pulid.persons import generate_pulid_persons

        return generate_pulid_persons(engine, request, progress)
    request = decode_inputs(request)
    models = load_pulid_models(engine, request)
    base = models.base
    width, height = pulid_output_size(gen, models.checkpoint.version)
    towers = [models.eva, models.parser, models.encoder]
    park_on_cpu(towers, engine.device, gen.cpu_offload)
    with on_device(towers, engine.device, gen.cpu_offload):
        prepared = prepare_pulid(engine, request, models)
    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)

    from idforge.identity.attention import IdentityAttention

    attention = IdentityAttention(base.unet)
    mask = load_mask(request.attn_mask, (width, height)) if request.attn_mask is not None else None
    attach_prepared(
        attention,
        "pulid",
        models.checkpoint.ip_layers,
        prepared,
        params,
        mask,
        engine.device,
        base.unet.dtype,
    )
    latents, images = sample_and_decode(engine, base, gen, seeds, (width, height), attention, [], progress)
    recipe = pulid_recipe(engine, request, models, prepared, PassLayout(seeds, width, height, started))
    extras: dict[str, Any] = {"face_images": prepared.face_images}
    result = GenerationResult(
        images=images,
        seeds=seeds,
        recipe=recipe.to_dict(),
        extras=extras,
        warnings=prepared.warnings,
        latents=latents,
    )
    return attach_identity(
        engine,
        result,
        list(request.faces),
        generation_pack=request.face_models,
        default_pack="antelopev2",
        pick=params.pick,
    )
