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
from typing import Any

from idforge.engine.inputs import load_named
from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.errors import InputName, NoFaceError, ParameterError, person_input
from idforge.methods.faceid.core import (
    FaceIDParams,
    FaceIDRequest,
    ProgressCallback,
    attach_faceid_adapter,
    faceid_lora,
    faceid_output_size,
    faceid_recipe,
    load_faceid_models,
    prepare_faceid,
)
from idforge.methods.person_scores import adapter_persons_result
from idforge.methods.persons import (
    ADAPTER_PERSON_FIELDS,
    Person,
    adapter_name,
    check_adapter_persons,
    decode_persons,
    mask_box,
    person_params,
    person_regions,
)


def check_faceid_persons(request: FaceIDRequest) -> list[FaceIDParams]:
    """Refuse what cannot work with FaceID persons; return each person's resolved FaceID parameters."""
    check_adapter_persons(request.persons, request.faces, request.attn_mask)
    if request.faceid.batch:
        raise ParameterError("batch", "batch mode (one output per reference) cannot be combined with persons")
    resolved = []
    for index, person in enumerate(request.persons, start=1):
        if person.cn_strength is not None:
            raise ParameterError(
                person_input(index, "cn_strength"), "FaceID has no IdentityNet; leave it out"
            )
        resolved.append(person_params(person, person_input(index), request.faceid, ADAPTER_PERSON_FIELDS))
    return resolved


def faceid_person_recipe(
    label: str, person: Person, params: FaceIDParams, region: Any, faces_info: list
) -> dict[str, Any]:
    return {
        "label": label,
        "faces": faces_info,
        "weight": params.weight,
        "start_at": params.start_at,
        "end_at": params.end_at,
        "region": {
            "given": person.region_text(),
            "box": list(mask_box(region)),
            "pixels": int((region > 0).sum()),
        },
    }


def generate_faceid_persons(
    engine: Engine, request: FaceIDRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Several people in one FaceID image, end to end."""
    started = time.perf_counter()
    params_list = check_faceid_persons(request)
    negative = request.negative_image
    request = replace(
        request,
        persons=decode_persons(request.persons),
        negative_image=load_named(negative, "negative image") if negative is not None else None,
    )
    gen = request.generation
    if (gen.width is None) != (gen.height is None):
        raise ParameterError("width/height", "give both width and height, or neither")
    if gen.width is not None and gen.height is not None:
        person_regions(request.persons, (gen.width, gen.height))  # region errors before any model loads
    models = load_faceid_models(engine, request)
    base = models.base
    width, height = faceid_output_size(gen, base.family)
    regions = person_regions(request.persons, (width, height))

    clip_model = models.clip[0] if models.clip is not None else None
    park_on_cpu([clip_model], engine.device, gen.cpu_offload)
    with on_device([clip_model], engine.device, gen.cpu_offload):
        prepared = []
        for index, (person, params) in enumerate(zip(request.persons, params_list, strict=True), start=1):
            try:
                person_request = replace(request, faces=person.faces, faceid=params)
                prepared.append(prepare_faceid(engine, person_request, models, gen.num_images))
            except NoFaceError as exc:
                raise NoFaceError(
                    InputName(f"person {index} face {exc.name}", f"persons[{index - 1}].face_image"),
                    exc.sizes_tried,
                ) from None

    from idforge.identity.attention import IdentityAttention

    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    dtype, device = base.unet.dtype, engine.device
    attention = IdentityAttention(base.unet)
    for index, (part, params, region) in enumerate(zip(prepared, params_list, regions, strict=True), start=1):
        name = adapter_name(index)
        attach_faceid_adapter(attention, name, models.adapter.ip_layers, part, params, region, device, dtype)
    lora_strength = request.faceid.lora_strength
    latents, images = sample_and_decode(
        engine,
        base,
        gen,
        seeds,
        (width, height),
        attention,
        (),
        progress,
        unet_contexts=[faceid_lora(models, lora_strength)],
    )

    recipe = faceid_recipe(engine, request, models, prepared[0], seed, len(seeds), width, height, started)
    recipe.inputs.pop("faces")
    recipe.inputs.pop("attn_mask")
    recipe.inputs.pop("batch_references")
    recipe.sections["persons"] = [
        faceid_person_recipe(f"person {index}", person, params, region, part.faces_info)
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
        pick=request.faceid.pick,
        default_pack="buffalo_l",
        warnings=models.warnings,
    )
