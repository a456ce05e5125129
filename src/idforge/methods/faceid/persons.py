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

from dataclasses import replace

from idforge.engine.inputs import load_named
from idforge.engine.result import GenerationResult
from idforge.engine.session import Engine
from idforge.errors import ParameterError
from idforge.methods.adapter_persons import (
    AdapterPersonsFlow,
    ProgressCallback,
    adapter_person_params,
    generate_adapter_persons,
)
from idforge.methods.faceid.core import (
    FaceIDParams,
    FaceIDRequest,
    faceid_output_size,
    faceid_recipe,
    load_faceid_models,
    prepare_faceid,
    sample_with_faceid_lora,
)
from idforge.methods.persons import Person


def check_faceid_persons(request: FaceIDRequest) -> list[FaceIDParams]:
    """Refuse what cannot work with FaceID persons; return each person's resolved FaceID parameters."""
    if request.persons and request.faceid.batch:
        raise ParameterError("batch", "batch mode (one output per reference) cannot be combined with persons")
    return adapter_person_params(
        request.persons, request.faces, request.attn_mask, request.faceid, "FaceID has no IdentityNet"
    )


def _decode_negative_image(request: FaceIDRequest) -> FaceIDRequest:
    """Plus models' negative image (CLIP's uncond input) is an input too: decoded before any model loads."""
    if request.negative_image is None:
        return request
    return replace(request, negative_image=load_named(request.negative_image, "negative image"))


def _prepare_person(engine, request: FaceIDRequest, models, person: Person, params: FaceIDParams):
    person_request = replace(request, faces=person.faces, faceid=params)
    return prepare_faceid(engine, person_request, models, request.generation.num_images)


def _sample(engine, request: FaceIDRequest, models, seeds, size, attention, progress):
    """The FaceID LoRA once for all persons, at the request's strength."""
    gen, strength = request.generation, request.faceid.lora_strength
    return sample_with_faceid_lora(engine, models, gen, seeds, size, attention, (), progress, strength)


FACEID_PERSONS = AdapterPersonsFlow(
    check=check_faceid_persons,
    decode=_decode_negative_image,
    load_models=load_faceid_models,
    output_size=lambda gen, models: faceid_output_size(gen, models.base.family),
    towers=lambda models: [models.clip[0] if models.clip is not None else None],  # CLIP: plus models only
    prepare=_prepare_person,
    ip_layers=lambda models: models.adapter.ip_layers,
    sample=_sample,
    recipe=faceid_recipe,
    pick=lambda request: request.faceid.pick,
    default_pack="buffalo_l",
    warnings=lambda models: models.warnings,
)


def generate_faceid_persons(
    engine: Engine, request: FaceIDRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Several people in one FaceID image, end to end."""
    return generate_adapter_persons(engine, request, FACEID_PERSONS, progress)
