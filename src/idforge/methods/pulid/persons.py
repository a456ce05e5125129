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
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.errors import InputName, NoFaceError, ParameterError, person_input
from idforge.methods.person_scores import adapter_persons_result
from idforge.methods.persons import (
    ADAPTER_PERSON_FIELDS,
    adapter_name,
    check_adapter_persons,
    decode_persons,
    mask_box,
    person_params,
    person_regions,
)
from idforge.methods.pulid.core import (
    ProgressCallback,
    PulidParams,
    PulidRequest,
    attach_pulid,
    load_pulid_models,
    prepare_pulid,
    pulid_output_size,
    pulid_recipe,
)


def check_pulid_persons(request: PulidRequest) -> list[PulidParams]:
    check_adapter_persons(request.persons, request.faces, request.attn_mask)
    resolved = []
    for index, person in enumerate(request.persons, start=1):
        if person.cn_strength is not None:
            raise ParameterError(person_input(index, "cn_strength"), "PuLID has no ControlNet; leave it out")
        resolved.append(person_params(person, person_input(index), request.pulid, ADAPTER_PERSON_FIELDS))
    return resolved


def generate_pulid_persons(
    engine: Engine, request: PulidRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    started = time.perf_counter()
    params_list = check_pulid_persons(request)
    request = replace(request, persons=decode_persons(request.persons))
    gen = request.generation
    if (gen.width is None) != (gen.height is None):
        raise ParameterError("width/height", "give both width and height, or neither")
    if gen.width is not None and gen.height is not None:
        person_regions(request.persons, (gen.width, gen.height))
    models = load_pulid_models(engine, request)
    base = models.base
    width, height = pulid_output_size(gen, models.checkpoint.version)
    regions = person_regions(request.persons, (width, height))
    towers = [models.eva, models.parser, models.encoder]
    park_on_cpu(towers, engine.device, gen.cpu_offload)
    prepared = []
    with on_device(towers, engine.device, gen.cpu_offload):
        for index, (person, params) in enumerate(zip(request.persons, params_list, strict=True), start=1):
            try:
                prepared.append(
                    prepare_pulid(engine, replace(request, faces=person.faces, pulid=params), models)
                )
            except NoFaceError as exc:
                raise NoFaceError(
                    InputName(f"person {index} face {exc.name}", f"persons[{index - 1}].face_image"),
                    exc.sizes_tried,
                ) from None

    from idforge.identity.attention import IdentityAttention

    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    attention = IdentityAttention(base.unet)
    for index, (part, params, region) in enumerate(zip(prepared, params_list, regions, strict=True), start=1):
        attach_pulid(
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
    recipe = pulid_recipe(engine, request, models, prepared[0], seed, len(seeds), width, height, started)
    recipe.inputs.pop("faces")
    recipe.inputs.pop("attn_mask")
    recipe.sections["persons"] = [
        {
            "label": f"person {index}",
            "faces": part.faces_info,
            "weight": params.weight,
            "start_at": params.start_at,
            "end_at": params.end_at,
            "region": {
                "given": person.region_text(),
                "box": list(mask_box(region)),
                "pixels": int((region > 0).sum()),
            },
        }
        for index, (person, params, region, part) in enumerate(
            zip(request.persons, params_list, regions, prepared, strict=True), start=1
        )
    ]
    return adapter_persons_result(
        engine,
        request,
        regions,
        prepared,
        (latents, images, seeds),
        recipe.to_dict(),
        pick=request.pulid.pick,
        default_pack="antelopev2",
    )
