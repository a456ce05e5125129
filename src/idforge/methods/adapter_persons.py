"""Several people in one image for the adapter-only methods (FaceID, PuLID): what their flows share.

Such a method puts one identity adapter per person on the shared `IdentityAttention`, each masked to its region,
and denoises once. The flow is written once, `generate_adapter_persons`; methods/faceid/persons.py and
methods/pulid/persons.py declare what differs (an `AdapterPersonsFlow`: their checks, models, towers, adapters,
sampling and recipe). Both refuse the same things, check the regions before any model loads when the size is known,
prepare each person's faces with the person's own parameters, and record the same per-person recipe entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from idforge.engine.memory import on_device, park_on_cpu
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import PassLayout, Recipe
from idforge.engine.result import GenerationResult
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.errors import InputName, NoFaceError, ParameterError, person_input
from idforge.identity.attention import IdentityAttention, attach_prepared
from idforge.methods.person_scores import score_persons
from idforge.methods.persons import (
    Person,
    adapter_name,
    check_persons,
    decode_persons,
    names_persons,
    person_params,
    person_regions,
    region_record,
)

Prepared = TypeVar("Prepared")
ProgressCallback = Callable[[int, int], None]

# A person's own strengths in an adapter method: `ip_weight` is the adapter's weight.
ADAPTER_PERSON_FIELDS = {"ip_weight": "weight", "start_at": "start_at", "end_at": "end_at"}


def _no_extra_inputs(request: Any) -> Any:
    return request


def _no_warnings(models: Any) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class AdapterPersonsFlow:
    """What an adapter method's several-people flow does its own way; `generate_adapter_persons` is the rest.
    `request`, `models`, `params` and a prepared part are the method's own types."""

    # the request -> each person's parameters, after refusing what does not apply
    check: Callable[[Any], list[Any]]
    load_models: Callable[[Engine, Any], Any]
    # (generation, models) -> (width, height)
    output_size: Callable[[GenerationParams, Any], tuple[int, int]]
    # models -> the feature towers a person's faces go through (on the device while preparing)
    towers: Callable[[Any], Sequence[torch.nn.Module | None]]
    # (engine, request, models, person, the person's params) -> the person's prepared part
    prepare: Callable[[Engine, Any, Any, Person, Any], Any]
    # models -> the IP weights every person's adapter shares
    ip_layers: Callable[[Any], Mapping[int, tuple[torch.Tensor, torch.Tensor]]]
    # (engine, request, models, seeds, size, attention, progress) -> (latents, images)
    sample: Callable[
        [Engine, Any, Any, list[int], tuple[int, int], IdentityAttention, ProgressCallback | None],
        tuple[torch.Tensor, list[Image.Image]],
    ]
    # (engine, request, models, the first person's part, layout) -> the recipe
    recipe: Callable[[Engine, Any, Any, Any, PassLayout], Recipe]
    # the request -> which output face a person's score takes
    pick: Callable[[Any], str | int]
    # the face pack that scores when the request names none
    default_pack: str
    # the request with its own inputs beside the persons decoded
    decode: Callable[[Any], Any] = _no_extra_inputs
    # models -> what loading them warned
    warnings: Callable[[Any], Sequence[str]] = _no_warnings


def generate_adapter_persons(
    engine: Engine,
    request: Any,
    flow: AdapterPersonsFlow,
    progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Several people in one image of an adapter method, end to end: every input checked and decoded before any
    model loads, each person prepared with its own parameters, one adapter per person on one attention, one
    pass."""
    started = time.perf_counter()
    params_list = flow.check(request)
    gen = request.generation
    request = replace(request, persons=decode_adapter_persons(request.persons, gen))
    request = flow.decode(request)
    models = flow.load_models(engine, request)
    width, height = flow.output_size(gen, models)
    regions = person_regions(request.persons, (width, height))

    towers = flow.towers(models)
    park_on_cpu(towers, engine.device, gen.cpu_offload)
    with on_device(towers, engine.device, gen.cpu_offload):
        prepared = prepare_each_person(
            request.persons,
            params_list,
            lambda person, params: flow.prepare(engine, request, models, person, params),
        )

    seeds = image_seeds(resolve_seed(gen.seed), gen.num_images)
    unet, ip_layers = models.base.unet, flow.ip_layers(models)
    attention = IdentityAttention(unet)
    for index, (part, params, region) in enumerate(zip(prepared, params_list, regions, strict=True), start=1):
        attach_prepared(
            attention, adapter_name(index), ip_layers, part, params, region, engine.device, unet.dtype
        )
    latents, images = flow.sample(engine, request, models, seeds, (width, height), attention, progress)

    layout = PassLayout(seeds, width, height, started)
    recipe = flow.recipe(engine, request, models, prepared[0], layout)
    return adapter_persons_result(
        engine,
        request,
        params_list,
        regions,
        prepared,
        (latents, images, seeds),
        recipe,
        pick=flow.pick(request),
        default_pack=flow.default_pack,
        warnings=flow.warnings(models),
    )


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
            "region": region_record(person, region),
        }
        for index, (person, params, region, part) in enumerate(
            zip(persons, params_list, regions, prepared, strict=True), start=1
        )
    ]
