"""Several people in one PuLID image: one ID branch per person, each masked to its region, one denoising pass.

A person is its faces (encoded as one PuLID reference set: v1.1 in one pass, v1 main + auxiliary tokens), its
weight (`ip_weight` of `Person` is its id_scale), its window and its region; `cn_strength` is refused (PuLID has no
ControlNet). Regions are checked (inside, not empty, disjoint) before any model loads when the size is given; the
ID weights of the checkpoint are shared by all persons on the one `IdentityAttention`; each person is scored in
its region (methods/person_scores.py). PuLID's official code has no multi-person mode: this is ours, built as the
references' two-person InstantID workflow (one identity branch per person, each with its mask).
"""

from __future__ import annotations

import time
from dataclasses import replace

from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.recipe import PassLayout
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.identity.attention import attach_prepared
from idforge.methods.adapter_persons import (
    adapter_person_params,
    adapter_persons_result,
    decode_adapter_persons,
    prepare_each_person,
)
from idforge.methods.persons import adapter_name, person_regions
from idforge.methods.pulid.core import (
    ProgressCallback,
    PulidParams,
    PulidRequest,
    load_pulid_models,
    prepare_pulid,
    pulid_output_size,
    pulid_recipe,
)


def check_pulid_persons(request: PulidRequest) -> list[PulidParams]:
    return adapter_person_params(
        request.persons, request.faces, request.attn_mask, request.pulid, "PuLID has no ControlNet"
    )


def generate_pulid_persons(
    engine: Engine, request: PulidRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    started = time.perf_counter()
    params_list = check_pulid_persons(request)
    gen = request.generation
    request = replace(request, persons=decode_adapter_persons(request.persons, gen))
    models = load_pulid_models(engine, request)
    base = models.base
    width, height = pulid_output_size(gen, models.checkpoint.version)
    regions = person_regions(request.persons, (width, height))
    towers = [models.eva, models.parser, models.encoder]
    park_on_cpu(towers, engine.device, gen.cpu_offload)
    with on_device(towers, engine.device, gen.cpu_offload):
        prepared = prepare_each_person(
            request.persons,
            params_list,
            lambda person, params: prepare_pulid(
                engine, replace(request, faces=person.faces, pulid=params), models
            ),
        )

    from idforge.identity.attention import IdentityAttention

    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    attention = IdentityAttention(base.unet)
    for index, (part, params, region) in enumerate(zip(prepared, params_list, regions, strict=True), start=1):
        attach_prepared(
            attention,
            adapter_name(index),
            models.checkpoint.ip_layers,
            part,
            params,
            region,
            engine.device,
            base.unet.dtype,
        )
    latents, images = sample_and_decode(engine, base, gen, seeds, (width, height), attention, (), progress)
    layout = PassLayout(seeds, width, height, started)
    recipe = pulid_recipe(engine, request, models, prepared[0], layout)
    return adapter_persons_result(
        engine,
        request,
        params_list,
        regions,
        prepared,
        (latents, images, seeds),
        recipe,
        pick=request.pulid.pick,
        default_pack="antelopev2",
    )
