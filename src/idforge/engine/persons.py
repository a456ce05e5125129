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

from idforge.engine.inputs import image_name, load_named
from idforge.engine.instantid import (
    IdentityRun,
    InstantIDRequest,
    PreparedInstantID,
    ProgressCallback,
    attach_instantid,
    identity_tokens,
    instantid_recipe,
    load_instantid_models,
)
from idforge.engine.params import MAX_PERSONS, InstantIDParams, Person
from idforge.engine.result import GenerationResult
from idforge.engine.sampling import sample_and_decode
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine
from idforge.engine.sizing import instantid_size, scale_box, scale_kps
from idforge.errors import NoFaceError, ParameterError
from idforge.imageio import load_mask

# The reference two-person workflow's canvas (SPEC.md section 8): 1280x960, one half per person.
DEFAULT_SIZE = (1280, 960)
# A mask image's pixel belongs to the region at or above this value (regions are sets of pixels: disjoint or not).
MASK_THRESHOLD = 0.5


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


# ---- checks and decoding (before any model loads) ------------------------------------------------------------


def check_persons(persons: Sequence[Any]) -> None:
    """What every multi-person method needs: 1..MAX_PERSONS Person objects, each with a face."""
    if not persons:
        raise ParameterError("persons", "no person given")
    if len(persons) > MAX_PERSONS:
        raise ParameterError("persons", f"{len(persons)} persons given, at most {MAX_PERSONS}")
    for index, person in enumerate(persons, start=1):
        if not isinstance(person, Person):
            raise ParameterError(f"person {index}", f"expected a Person, got {type(person).__name__}")
        if not person.faces:
            raise ParameterError(f"person {index} face", "at least one reference face image is needed")


def person_params(person: Person, label: str, defaults: Any, fields: dict[str, str]) -> Any:
    """`defaults` (a parameter object) with the person's overrides; `fields` maps Person fields to its names."""
    overrides = {
        target: getattr(person, source)
        for source, target in fields.items()
        if getattr(person, source) is not None
    }
    try:
        return replace(defaults, **overrides)
    except ParameterError as exc:
        raise ParameterError(f"{label} {exc.name}", exc.problem) from None


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
        person_params(person, f"person {index}", request.instantid, fields)
        for index, person in enumerate(request.persons, start=1)
    ]


def decode_persons(persons: Sequence[Person]) -> list[Person]:
    """Copies of the persons with their faces decoded and their masks checked (before any model loads)."""
    decoded = []
    for index, person in enumerate(persons, start=1):
        faces = [
            load_named(source, f"person {index} face image {i}") for i, source in enumerate(person.faces)
        ]
        if person.mask is not None:
            load_mask(person.mask, (8, 8), name=image_name(person.mask, f"person {index} mask"))
        decoded.append(replace(person, faces=faces))
    return decoded


def load_person_images(request: InstantIDRequest) -> InstantIDRequest:
    """A copy of the request with every person's faces, the pose and the keypoint image decoded, and every mask
    checked: a bad image fails, naming it, before any model loads."""
    pose = load_named(request.pose, "pose image") if request.pose is not None else None
    kps_image = load_named(request.kps_image, "keypoint image") if request.kps_image is not None else None
    return replace(request, persons=decode_persons(request.persons), pose=pose, kps_image=kps_image)


def output_size(request: InstantIDRequest) -> tuple[int, int]:
    """Width/height when given; else the pose (or keypoint) image's InstantID size; else the two-person canvas."""
    gen = request.generation
    if gen.width is not None and gen.height is not None:
        return gen.width, gen.height
    if gen.width is not None or gen.height is not None:
        raise ParameterError("width/height", "give both width and height, or neither")
    for source in (request.pose, request.kps_image):
        if source is not None:
            return instantid_size(*load_named(source, "pose or keypoint image").image.size)
    if all(person.region in ("top", "bottom") for person in request.persons):
        return DEFAULT_SIZE[1], DEFAULT_SIZE[0]
    return DEFAULT_SIZE


# ---- regions --------------------------------------------------------------------------------------------------


def region_mask(person: Person, label: str, size: tuple[int, int]) -> np.ndarray:
    """The person's region as a 0/1 float32 (H, W) mask at the output size (width, height)."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.float32)
    if person.region is not None:
        half_w, half_h = width // 2, height // 2
        area = {
            "left": (slice(None), slice(0, half_w)),
            "right": (slice(None), slice(half_w, width)),
            "top": (slice(0, half_h), slice(None)),
            "bottom": (slice(half_h, height), slice(None)),
        }[person.region]
        mask[area] = 1.0
        return mask
    if person.box is not None:
        x1, y1, x2, y2 = person.box
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ParameterError(
                f"{label} box", f"{x1}:{y1}:{x2}:{y2} reaches outside the {width}x{height} image"
            )
        mask[y1:y2, x1:x2] = 1.0
        return mask
    name = image_name(person.mask, f"{label} mask")
    soft = load_mask(person.mask, size, name=name)
    mask = (soft >= MASK_THRESHOLD).astype(np.float32)
    if not mask.any():
        raise ParameterError(
            f"{label} mask", f"{name} is empty: no pixel of it is at or above {MASK_THRESHOLD}"
        )
    return mask


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2), exclusive ends, of a mask's non-zero pixels."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def check_disjoint(labels: Sequence[str], masks: Sequence[np.ndarray], persons: Sequence[Person]) -> None:
    """Two persons may not share a pixel: the same place cannot take two identities."""
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            shared = int(np.count_nonzero((masks[i] > 0) & (masks[j] > 0)))
            if shared:
                raise ParameterError(
                    f"{labels[i]}/{labels[j]} regions",
                    f"{persons[i].region_text()} and {persons[j].region_text()} overlap by {shared} pixels; "
                    "regions must be disjoint",
                )


def person_regions(persons: Sequence[Person], size: tuple[int, int]) -> list[np.ndarray]:
    """Every person's region mask at the output size, checked: inside the image, not empty, disjoint
    (InstantID and FaceID alike)."""
    persons = list(persons)
    labels = [f"person {i}" for i in range(1, len(persons) + 1)]
    masks = [region_mask(person, label, size) for person, label in zip(persons, labels, strict=True)]
    check_disjoint(labels, masks, persons)
    return masks


def centre_in(mask: np.ndarray, box: np.ndarray) -> bool:
    """True when the centre of `box` (output coordinates) is a pixel of `mask`."""
    height, width = mask.shape
    cx = int((float(box[0]) + float(box[2])) / 2)
    cy = int((float(box[1]) + float(box[3])) / 2)
    return 0 <= cx < width and 0 <= cy < height and bool(mask[cy, cx] > 0)


def pick_in_region(mask: np.ndarray, boxes: Sequence[np.ndarray]) -> int | None:
    """Index of the largest box whose centre lies in the region, or None."""
    inside = [i for i, box in enumerate(boxes) if centre_in(mask, box)]
    if not inside:
        return None
    return max(inside, key=lambda i: float((boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])))


def fit_into_box(
    kps: np.ndarray, face_box: np.ndarray, image_size: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A reference face's keypoints and box moved as if its whole image were scaled to fit `box`, centred."""
    image_w, image_h = image_size
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    scale = min(box_w / image_w, box_h / image_h)
    offset = np.array([x1 + (box_w - scale * image_w) / 2, y1 + (box_h - scale * image_h) / 2], np.float32)
    points = np.asarray(kps, dtype=np.float32) * scale + offset
    moved = np.asarray(face_box, dtype=np.float32) * scale + np.tile(offset, 2)
    return points, moved


# ---- preparation --------------------------------------------------------------------------------------------


def prepare_persons(
    engine: Engine, request: InstantIDRequest, params_list: Sequence[InstantIDParams], projection: Any
) -> tuple[list[PreparedPerson], list[str]]:
    """Tokens, region and keypoint image of every person; also the warnings for the result."""
    from idforge.faces.analysis import fallback_sizes
    from idforge.faces.draw import draw_kps

    analyzer = engine.face_analyzer(request.face_models)
    width, height = output_size(request)
    persons = list(request.persons)
    labels = [f"person {i}" for i in range(1, len(persons) + 1)]
    masks = person_regions(request.persons, (width, height))
    warnings: list[str] = []

    pose_boxes: list[np.ndarray] = []
    pose_kps: list[np.ndarray] = []
    pose_name = ""
    if request.pose is not None:
        pose = load_named(request.pose, "pose image")
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
        ready = load_named(request.kps_image, "keypoint image").image.convert("RGB")
        ready_kps = np.asarray(ready.resize((width, height), Image.BICUBIC))

    prepared: list[PreparedPerson] = []
    for person, label, mask, params in zip(persons, labels, masks, params_list, strict=True):
        try:
            identity = identity_tokens(
                engine, analyzer, person.faces, params, projection, label=f"{label} face image"
            )
        except NoFaceError as exc:
            if exc.name.startswith(label):
                raise
            raise NoFaceError(f"{label} face {exc.name}", exc.sizes_tried) from None
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
                        f"{label} region",
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


# ---- generation ---------------------------------------------------------------------------------------------


def adapter_name(index: int) -> str:
    """The name of person `index`'s (1-based) adapter on IdentityAttention and its IdentityNet unit."""
    return f"person{index}"


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
        "region": {
            "given": person.person.region_text(),
            "box": list(person.region_box),
            "pixels": int(np.count_nonzero(person.region)),
        },
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
    recipe = instantid_recipe(engine, request, models, persons[0].prepared, run, started)
    recipe["inputs"].pop("faces")
    recipe["inputs"].pop("mask")
    recipe["persons"] = [person_recipe(person) for person in persons]
    result = GenerationResult(
        images=run.images,
        seeds=run.seeds,
        recipe=recipe,
        extras={"kps_image": combined_kps_image(persons), "regions": [p.region for p in persons]},
        warnings=warnings,
        latents=run.latents,
    )
    if request.generation.score:
        from idforge.engine.person_scores import score_persons

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
        recipe["identity"] = result.identity.to_json()
    return result
