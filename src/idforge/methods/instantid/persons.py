"""Several people in one image: one InstantID identity per person, each acting only inside its own region.

Flow, top to bottom (issue 11 item 5; SPEC.md section 8 says what the reference workflows do):
1. check every person (faces, strengths, window, exactly one region) and decode every image before any model loads;
2. the output size: width/height when given, else the pose (or keypoint) image's InstantID size, else 1280x960
   (960x1280 when every region is `top` or `bottom`);
3. each region becomes a 0/1 (H, W) mask at the output size; regions must be inside the image, not empty and
   disjoint;
4. each person's keypoints: the face of the pose image whose centre lies in the person's region (the largest if
   several), or the person's own reference face fitted into the region (the reference image scaled to fit the
   region's box, centred), or the ready keypoint image cut to the region;
5. ONE denoising pass: per person an IP adapter on the shared `IdentityAttention` (its tokens, ip_weight, window,
   region) and one IdentityNet `ControlUnit` (its tokens as context, its keypoint image, cn_strength, window,
   region); `attach_instantid` builds both, exactly as for one person, and the loop sums the residuals;
6. one identity score per person: faces found in the output are matched to persons by position (the face whose
   centre lies in the person's region, the largest if several).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from idforge.engine.inputs import load_named
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.engine.sizing import scale_box, scale_kps
from idforge.errors import KPS, POSE, InputName, NoFaceError, ParameterError, person_input
from idforge.methods.instantid.core import (
    IdentityRun,
    InstantIDRequest,
    PreparedInstantID,
    ProgressCallback,
    attach_instantid,
    identity_tokens,
    instantid_recipe,
    load_instantid_models,
)
from idforge.methods.instantid.params import InstantIDParams
from idforge.methods.persons import (
    Person,
    adapter_name,
    check_persons,
    decode_persons,
    fit_into_box,
    mask_box,
    output_size,
    person_params,
    person_regions,
    pick_in_region,
    region_record,
)


@dataclass
class PreparedPerson:
    """One person after face analysis, projection, region and keypoints: what `attach_instantid` takes."""

    label: str  # "person 1", ...
    person: Person
    params: InstantIDParams  # the request's values with this person's overrides
    region: np.ndarray  # (H, W) float32 0/1 at the output size
    region_box: tuple[int, int, int, int]  # bounding box of the region
    prepared: PreparedInstantID  # tokens, this person's keypoint image, its face box
    kps_source: str  # "pose", "own", "own (pose fallback)" or "kps_image"


def check_person_request(request: InstantIDRequest) -> list[InstantIDParams]:
    """Refuse what cannot work with persons; return each person's resolved InstantID parameters."""
    check_persons(request.persons)
    if request.faces:
        raise ParameterError("face", "give either reference faces or persons (each with its faces), not both")
    if request.mask is not None:
        raise ParameterError(
            "mask", "with persons, each person's region (region=, box= or mask=) replaces the mask"
        )
    fields = {name: name for name in ("ip_weight", "cn_strength", "start_at", "end_at")}
    return [
        person_params(person, person_input(index), request.instantid, fields)
        for index, person in enumerate(request.persons, start=1)
    ]


def load_person_images(request: InstantIDRequest) -> InstantIDRequest:
    """A copy of the request with every person's faces, the pose and the keypoint image decoded, and every mask
    checked: a bad image fails, naming it, before any model loads."""
    pose = load_named(request.pose, POSE) if request.pose is not None else None
    kps_image = load_named(request.kps_image, KPS) if request.kps_image is not None else None
    return replace(request, persons=decode_persons(request.persons), pose=pose, kps_image=kps_image)


def prepare_persons(
    engine: Engine, request: InstantIDRequest, params_list: Sequence[InstantIDParams], projection: Any
) -> tuple[list[PreparedPerson], list[str]]:
    """Tokens, region and keypoint image of every person; also the warnings for the result."""
    from idforge.faces.analysis import fallback_sizes
    from idforge.faces.draw import draw_kps

    analyzer = engine.face_analyzer(request.face_models)
    width, height = output_size(request)
    persons = list(request.persons)
    labels = [person_input(i) for i in range(1, len(persons) + 1)]
    masks = person_regions(request.persons, (width, height))
    warnings: list[str] = []

    pose_boxes: list[np.ndarray] = []
    pose_kps: list[np.ndarray] = []
    pose_name = ""
    if request.pose is not None:
        pose = load_named(request.pose, POSE)
        pose_name = pose.name
        det_size = request.instantid.det_size
        found = analyzer.find_faces(pose.image, det_size=det_size, name=pose_name)
        if not found and not request.pose_fallback:
            raise NoFaceError(
                pose_name,
                fallback_sizes(det_size, analyzer.largest_stride),
                "pass pose_fallback (CLI: --pose-fallback) to use each person's own keypoints",
            )
        for face in found:
            pose_kps.append(scale_kps(face.kps, pose.image.size, (width, height)))
            pose_boxes.append(scale_box(face.bbox, pose.image.size, (width, height)))
    ready_kps = None
    if request.kps_image is not None:
        ready = load_named(request.kps_image, KPS).image.convert("RGB")
        ready_kps = np.asarray(ready.resize((width, height), Image.Resampling.BICUBIC))

    prepared: list[PreparedPerson] = []
    for number, (person, label, mask, params) in enumerate(
        zip(persons, labels, masks, params_list, strict=True), start=1
    ):
        try:
            identity = identity_tokens(engine, analyzer, person.faces, params, projection, person=number)
        except NoFaceError as exc:
            if exc.name.startswith(label):
                raise
            field = f"{label.field}.face_image" if isinstance(label, InputName) else None
            raise NoFaceError(InputName(f"{label} face {exc.name}", field), exc.sizes_tried) from None
        warnings += [f"{label}: {warning}" for warning in identity.warnings]
        box = mask_box(mask)
        face_box: np.ndarray | None
        if ready_kps is not None:
            kps_image = Image.fromarray((ready_kps * mask[:, :, None]).astype(np.uint8), mode="RGB")
            face_box, source = None, "kps_image"
        else:
            chosen = pick_in_region(mask, pose_boxes) if request.pose is not None else None
            if chosen is not None:
                kps, face_box, source = pose_kps[chosen], pose_boxes[chosen], "pose"
            else:
                if request.pose is not None and not request.pose_fallback:
                    centres = [
                        [round(float(b[0] + b[2]) / 2), round(float(b[1] + b[3]) / 2)] for b in pose_boxes
                    ]
                    raise ParameterError(
                        InputName(f"{label} region", f"{label.field}"),
                        f"no face of the pose image {pose_name} has its centre in {person.region_text()} "
                        f"(face centres at output size: {centres}); move the region or pass pose_fallback "
                        "to use the person's own keypoints",
                    )
                image, face = identity.reference_faces[0]
                kps, face_box = fit_into_box(face.kps, face.bbox, image.size, box)
                source = "own"
                if request.pose is not None:
                    source = "own (pose fallback)"
                    warnings.append(
                        f"{label}: no face of {pose_name} in its region; using its own keypoints fitted into it"
                    )
            kps_image = draw_kps((width, height), kps)
        prepared.append(
            PreparedPerson(
                label=label,
                person=person,
                params=params,
                region=mask,
                region_box=box,
                prepared=PreparedInstantID(
                    identity.cond_tokens,
                    identity.uncond_tokens,
                    kps_image,
                    width,
                    height,
                    face_box,
                    identity.faces_info,
                    [],
                ),
                kps_source=source,
            )
        )
    return prepared, warnings


def combined_kps_image(persons: Sequence[PreparedPerson]) -> Image.Image:
    """Every person's keypoint drawing on one canvas (what a user looks at to check the placement)."""
    stacked = np.stack([np.asarray(p.prepared.kps_image) for p in persons])
    return Image.fromarray(stacked.max(axis=0), mode="RGB")


def run_persons(
    engine: Engine,
    models: Any,  # InstantIDModels
    persons: Sequence[PreparedPerson],
    request: InstantIDRequest,
    progress: ProgressCallback | None = None,
) -> IdentityRun:
    """One denoising pass with every person's IP adapter and IdentityNet unit, each limited to its region."""
    from idforge.identity.attention import IdentityAttention

    gen = request.generation
    base = models.base
    width, height = persons[0].prepared.width, persons[0].prepared.height
    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    latent_hw = (height // base.vae_scale_factor, width // base.vae_scale_factor)
    attention = IdentityAttention(base.unet)
    controls = [
        attach_instantid(
            engine,
            attention,
            models,
            person.prepared,
            person.params,
            person.region,
            len(seeds),
            latent_hw,
            name=adapter_name(index),
        )
        for index, person in enumerate(persons, start=1)
    ]
    latents, images = sample_and_decode(
        engine, base, gen, seeds, (width, height), attention, controls, progress
    )
    return IdentityRun(images, seed, seeds, latents)


def person_recipe(person: PreparedPerson) -> dict[str, Any]:
    """Everything about one person the recipe keeps: faces, parameters, region and where its keypoints came from."""
    entry: dict[str, Any] = {
        "label": person.label,
        "faces": person.prepared.faces_info,
        "ip_weight": person.params.ip_weight,
        "cn_strength": person.params.cn_strength,
        "start_at": person.params.start_at,
        "end_at": person.params.end_at,
        "region": region_record(person.person, person.region),
        "kps": {"source": person.kps_source},
    }
    if person.prepared.face_box is not None:
        entry["kps"]["face_box"] = [round(float(v), 2) for v in person.prepared.face_box]
    return entry


def generate_persons(
    engine: Engine, request: InstantIDRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Several people in one image, end to end: checks, one denoising pass, one score per person, the recipe."""
    started = time.perf_counter()
    params_list = check_person_request(request)
    request = load_person_images(request)
    person_regions(request.persons, output_size(request))  # size and region errors before any model loads
    models = load_instantid_models(engine, request.base, request.instantid_model)
    persons, warnings = prepare_persons(engine, request, params_list, models.projection)
    run = run_persons(engine, models, persons, request, progress)
    recipe = instantid_recipe(
        engine,
        request,
        models,
        persons[0].prepared,
        run,
        started,
        sections={"persons": [person_recipe(person) for person in persons]},
    )
    recipe.inputs.pop("faces")
    recipe.inputs.pop("mask")
    result = GenerationResult(
        images=run.images,
        seeds=run.seeds,
        recipe=recipe.to_dict(),
        extras={"kps_image": combined_kps_image(persons), "regions": [p.region for p in persons]},
        warnings=warnings,
        latents=run.latents,
    )
    if request.generation.score:
        from idforge.methods.person_scores import score_persons

        result.identity = score_persons(
            engine,
            result.images,
            [person.person for person in persons],
            [person.region for person in persons],
            pick=request.instantid.pick,
            generation_pack=request.face_models,
            default_pack="antelopev2",
            score_models=request.generation.score_models,
        )
        result.recipe["identity"] = result.identity.to_json()
    return result
