"""Several people in one image for the adapter-only methods (FaceID, PuLID): what their flows share.

Such a method puts one identity adapter per person on the shared `IdentityAttention`, each masked to its region,
and denoises once (methods/faceid/persons.py, methods/pulid/persons.py keep their models, adapters and sampling).
Both refuse the same things, check the regions before any model loads when the size is known, prepare each
person's faces with the person's own parameters, and record the same per-person recipe entry: that is here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.engine.recipe import Recipe
from idforge.engine.result import GenerationResult
from idforge.engine.session import Engine
from idforge.errors import InputName, NoFaceError, ParameterError, person_input
from idforge.methods.person_scores import score_persons
from idforge.methods.persons import (
    Person,
    check_persons,
    decode_persons,
    mask_box,
    names_persons,
    person_params,
    person_regions,
)

Prepared = TypeVar("Prepared")

# A person's own strengths in an adapter method: `ip_weight` is the adapter's weight.
ADAPTER_PERSON_FIELDS = {"ip_weight": "weight", "start_at": "start_at", "end_at": "end_at"}


def check_adapter_persons(persons: Sequence[Person], faces: Sequence[Any], attn_mask: Any) -> None:
    """What a several-people request of an adapter method refuses: reference faces or an attention mask beside the
    persons (each person brings its own faces, and its region is its mask)."""
    check_persons(persons)
    if faces:
        raise ParameterError("face", "give either reference faces or persons (each with its faces), not both")
    if attn_mask is not None:
        raise ParameterError("attn_mask", "with persons, each person's region replaces the attention mask")


def adapter_person_params(
    persons: Sequence[Person], faces: Sequence[Any], attn_mask: Any, defaults: Any, no_controlnet: str
) -> list[Any]:
    """Each person's parameters: the request's (`defaults`) with the person's weight and window. A person's
    `cn_strength` is refused with `no_controlnet` (the method has no ControlNet to give it to)."""
    check_adapter_persons(persons, faces, attn_mask)
    resolved = []
    for index, person in enumerate(persons, start=1):
        if person.cn_strength is not None:
            raise ParameterError(person_input(index, "cn_strength"), f"{no_controlnet}; leave it out")
        resolved.append(person_params(person, person_input(index), defaults, ADAPTER_PERSON_FIELDS))
    return resolved


def check_adapter_call(
    call: Any, build_request: Callable[[Any], Any], check_request: Callable[[Any], Any]
) -> None:
    """An adapter method's `check` (a MethodCall): one reference face, or persons whose parameters and (when the
    size is given) regions are checked, before anything is queued or charged."""
    if names_persons(call):
        request = build_request(call)
        check_request(request)
        check_regions_at_given_size(request.persons, request.generation)


def decode_adapter_persons(persons: Sequence[Person], generation: GenerationParams) -> list[Person]:
    """The persons with their images decoded and their regions checked: every input error before any model
    loads."""
    decoded = decode_persons(persons)
    check_regions_at_given_size(decoded, generation)
    return decoded


def check_regions_at_given_size(persons: Sequence[Person], generation: GenerationParams) -> None:
    """The regions inside the image, not empty and disjoint, when width and height are given (else the base
    decides the size, once it is loaded)."""
    if (generation.width is None) != (generation.height is None):
        raise ParameterError("width/height", "give both width and height, or neither")
    if generation.width is not None and generation.height is not None:
        person_regions(persons, (generation.width, generation.height))


def prepare_each_person(
    persons: Sequence[Person], params_list: Sequence[Any], prepare: Callable[[Person, Any], Prepared]
) -> list[Prepared]:
    """`prepare(person, params)` for every person; a face not found names the person and its face."""
    prepared = []
    for index, (person, params) in enumerate(zip(persons, params_list, strict=True), start=1):
        try:
            prepared.append(prepare(person, params))
        except NoFaceError as exc:
            raise NoFaceError(
                InputName(f"person {index} face {exc.name}", f"persons[{index - 1}].face_image"),
                exc.sizes_tried,
            ) from None
    return prepared


def adapter_persons_result(
    engine: Engine,
    request: Any,
    params_list: Sequence[Any],
    regions: Sequence[np.ndarray],
    prepared: Sequence[Any],
    sampled: tuple[Any, list[Image.Image], list[int]],
    recipe: Recipe,
    *,
    pick: str | int,
    default_pack: str,
    warnings: Sequence[str] = (),
) -> GenerationResult:
    """The result: the images, each person's face crops, the regions, and one score per person when the request
    scores (methods/person_scores.py). The recipe records each person (faces, weight, window, region) in place of
    the request-wide faces and attention mask. `sampled` is (latents, images, seeds); `prepared` each person's
    prepared part (faces_info, face_images, warnings)."""
    for name in ("faces", "attn_mask", "batch_references"):
        recipe.inputs.pop(name, None)
    recipe.sections["persons"] = _person_recipes(request.persons, params_list, regions, prepared)
    latents, images, seeds = sampled
    result = GenerationResult(
        images=images,
        seeds=seeds,
        recipe=recipe.to_dict(),
        extras={"face_images": [crop for part in prepared for crop in part.face_images], "regions": regions},
        warnings=[*warnings, *(w for part in prepared for w in part.warnings)],
        latents=latents,
    )
    gen = request.generation
    if gen.score:
        result.identity = score_persons(
            engine,
            images,
            request.persons,
            regions,
            pick=pick,
            generation_pack=request.face_models,
            default_pack=default_pack,
            score_models=gen.score_models,
        )
        result.recipe["identity"] = result.identity.to_json()
    return result


def _person_recipes(
    persons: Sequence[Person],
    params_list: Sequence[Any],
    regions: Sequence[np.ndarray],
    prepared: Sequence[Any],
) -> list[dict[str, Any]]:
    return [
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
            zip(persons, params_list, regions, prepared, strict=True), start=1
        )
    ]
