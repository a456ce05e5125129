"""Several people in one FaceID image: one FaceID adapter per person, each acting only inside its region.

FaceID has no keypoints and no IdentityNet, so a person here is its faces, its weight (`ip_weight` of `Person`),
its window and its region; `cn_strength` is refused. Flow:
1. check the persons and decode every image before any model loads; regions at the output size (width/height,
   else the base's default square), inside the image, not empty, disjoint;
2. each person's faces go through FaceID's own face path (`prepare_faceid`: embedding, CLIP for plus models,
   combining, projection) with the request's settings and the person's overrides;
3. ONE denoising pass: every person's adapter on the shared `IdentityAttention` (the checkpoint's IP weights
   shared), its region as the attention mask; the FaceID LoRA once for all;
4. one identity score per person, output faces matched by position (methods/person_scores.py).
"""

from __future__ import annotations

import time
from dataclasses import replace

from idforge.engine.inputs import load_named
from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.recipe import PassLayout
from idforge.engine.result import GenerationResult
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.errors import ParameterError
from idforge.identity.attention import attach_prepared
from idforge.methods.adapter_persons import (
    adapter_person_params,
    adapter_persons_result,
    decode_adapter_persons,
    prepare_each_person,
)
from idforge.methods.faceid.core import (
    FaceIDParams,
    FaceIDRequest,
    ProgressCallback,
    faceid_output_size,
    faceid_recipe,
    load_faceid_models,
    prepare_faceid,
    sample_with_faceid_lora,
)
from idforge.methods.persons import adapter_name, person_regions


def check_faceid_persons(request: FaceIDRequest) -> list[FaceIDParams]:
    """Refuse what cannot work with FaceID persons; return each person's resolved FaceID parameters."""
    if request.persons and request.faceid.batch:
        raise ParameterError("batch", "batch mode (one output per reference) cannot be combined with persons")
    return adapter_person_params(
        request.persons, request.faces, request.attn_mask, request.faceid, "FaceID has no IdentityNet"
    )


def generate_faceid_persons(
    engine: Engine, request: FaceIDRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Several people in one FaceID image, end to end."""
    started = time.perf_counter()
    params_list = check_faceid_persons(request)
    gen = request.generation
    negative = request.negative_image
    request = replace(
        request,
        persons=decode_adapter_persons(request.persons, gen),
        negative_image=load_named(negative, "negative image") if negative is not None else None,
    )
    models = load_faceid_models(engine, request)
    base = models.base
    width, height = faceid_output_size(gen, base.family)
    regions = person_regions(request.persons, (width, height))

    clip_model = models.clip[0] if models.clip is not None else None
    park_on_cpu([clip_model], engine.device, gen.cpu_offload)
    with on_device([clip_model], engine.device, gen.cpu_offload):
        prepared = prepare_each_person(
            request.persons,
            params_list,
            lambda person, params: prepare_faceid(
                engine, replace(request, faces=person.faces, faceid=params), models, gen.num_images
            ),
        )

    from idforge.identity.attention import IdentityAttention

    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    dtype, device = base.unet.dtype, engine.device
    attention = IdentityAttention(base.unet)
    for index, (part, params, region) in enumerate(zip(prepared, params_list, regions, strict=True), start=1):
        name = adapter_name(index)
        attach_prepared(attention, name, models.adapter.ip_layers, part, params, region, device, dtype)
    latents, images = sample_with_faceid_lora(
        engine, models, gen, seeds, (width, height), attention, (), progress, request.faceid.lora_strength
    )

    layout = PassLayout(seeds, width, height, started)
    recipe = faceid_recipe(engine, request, models, prepared[0], layout)
    return adapter_persons_result(
        engine,
        request,
        params_list,
        regions,
        prepared,
        (latents, images, seeds),
        recipe,
        pick=request.faceid.pick,
        default_pack="buffalo_l",
        warnings=models.warnings,
    )
