"""InstantID in the method registry: its body, inputs, request, batching and warm-up."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from idforge.methods.instantid.body import InstantIDBody
from idforge.methods.instantid.cli import COMMAND_LINE
from idforge.methods.registry import ImageInput, Method, MethodCall, lazy

PER_SAMPLE_PARAMS = frozenset({"prompt", "negative_prompt", "seed", "style", "score_models", "base64"})


def build_request(call: MethodCall) -> Any:
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.params import InstantIDParams

    return call.request(
        InstantIDRequest,
        instantid=call.parameters(InstantIDParams),
        pose=call.image("pose_image"),
        kps_image=call.image("kps_image"),
        mask=call.image("mask_image"),
        pose_fallback=call.params["pose_fallback"],
    )


def check(call: MethodCall) -> None:
    """face_image, or persons (with regions inside the image and disjoint): checked before anything is queued."""
    from idforge.methods.persons import names_persons

    if not names_persons(call):
        return
    from idforge.methods.instantid.persons import check_person_request
    from idforge.methods.persons import output_size, person_regions

    request = build_request(call)
    check_person_request(request)
    person_regions(request.persons, output_size(request))


def from_recipe(call: Any, part: Mapping[str, Any] | None = None) -> Any:
    """The request a recipe records (methods/reproduce.py). `part`: the InstantID section of a FaceID + InstantID
    recipe, whose sampler settings and base are the FaceID request's."""
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.params import InstantIDParams

    pose_fallback = True  # a pose without a face only ran (on the reference keypoints) with the fallback
    if part is None:
        return call.request(
            InstantIDRequest,
            instantid=call.params(InstantIDParams),
            pose_fallback=pose_fallback,
            instantid_model=call.instantid_folder(),
        )
    inputs, models = part.get("inputs") or {}, part.get("models") or {}
    return InstantIDRequest(
        faces=call.faces("instantid_faces", inputs),
        instantid=call.params(InstantIDParams, part.get("params") or {}),
        pose=call.image("pose", inputs),
        kps_image=call.image("kps_image", inputs),
        mask=call.image("mask", inputs),
        pose_fallback=pose_fallback,
        instantid_model=call.instantid_folder(models),
        face_models=call.model("face_models", models),
    )


def batch_key(params: dict[str, Any], given: dict[str, Any]) -> str | None:
    """Jobs with equal keys share one denoising pass (methods/instantid/batch.py); None: it runs alone."""
    if params.get("persons") or given.get("mask_image") or params.get("enhance_face_region"):
        return None
    if params.get("best_of", 1) != 1 or params.get("num_images", 1) != 1:
        return None
    if params.get("width") is None or params.get("height") is None:
        return None
    shared = {name: value for name, value in sorted(params.items()) if name not in PER_SAMPLE_PARAMS}
    images = sorted(name for name, present in given.items() if present and name != "extra_face_images")
    references = 1 + len(given.get("extra_face_images") or [])  # concat: tokens per reference
    return json.dumps(["instantid", shared, images, references], sort_keys=True, default=str)


METHOD = Method(
    name="instantid",
    title="InstantID",
    summary="InstantID",
    body=InstantIDBody,
    images=(
        ImageInput("face_image", "--face", "reference face (repeatable)", extra="extra_face_images"),
        ImageInput("pose_image", "--pose", "photo whose face gives the keypoints"),
        ImageInput("kps_image", "--kps-image", "an already drawn keypoint image"),
        ImageInput("mask_image", "--mask", "restrict IP attention and IdentityNet to this area"),
    ),
    build_request=build_request,
    run=lazy("idforge.methods.instantid.generate", "generate_instantid"),
    cli=COMMAND_LINE,
    check=check,
    run_batch=lazy("idforge.methods.instantid.batch", "generate_instantid_batch"),
    batch_key=batch_key,
    previews=("faces", "keypoints"),
    from_recipe=from_recipe,
    workflow="idforge.methods.instantid.workflow",
)
