"""PuLID in the method registry: its body, inputs, request and checks."""

from __future__ import annotations

from typing import Any

from idforge.methods.pulid.body import PulidBody
from idforge.methods.pulid.cli import COMMAND_LINE
from idforge.methods.registry import ImageInput, Method, MethodCall, lazy


def build_request(call: MethodCall) -> Any:
    from idforge.methods.pulid.core import PulidParams, PulidRequest

    return PulidRequest(
        faces=call.faces(),
        persons=call.persons,
        generation=call.generation,
        pulid=call.parameters(PulidParams),
        attn_mask=call.image("mask_image"),
        model=call.params["model"],
    )


def check(call: MethodCall) -> None:
    """face_image or persons (regions checked when the size is given), before anything is queued or charged."""
    from idforge.errors import ParameterError
    from idforge.methods.persons import require_face_or_persons

    require_face_or_persons(call.image("face_image") is not None, call.persons)
    if not call.persons:
        return
    if (
        call.image("face_image") is not None
        or call.image("extra_face_images")
        or call.image("mask_image") is not None
    ):
        raise ParameterError(
            "persons",
            "replaces face_image, extra_face_images and mask_image: give each person's own",
            field="persons",
        )
    from idforge.methods.persons import person_regions
    from idforge.methods.pulid.persons import check_pulid_persons

    request = build_request(call)
    check_pulid_persons(request)
    gen = request.generation
    if gen.width is not None and gen.height is not None:
        person_regions(request.persons, (gen.width, gen.height))


METHOD = Method(
    name="pulid",
    title="PuLID",
    summary="PuLID for SDXL (v1, v1.1, ComfyUI's file): EVA02-CLIP + ArcFace ID tokens in every cross-attention",
    body=PulidBody,
    images=(
        ImageInput(
            "face_image",
            "--face",
            "reference face (repeatable: auxiliary references)",
            extra="extra_face_images",
        ),
        ImageInput("mask_image", "--attn-mask", "restrict the ID branch to this area"),
    ),
    build_request=build_request,
    run=lazy("idforge.methods.pulid.generate", "generate_pulid"),
    recipe_section="pulid",
    cli=COMMAND_LINE,
    check=check,
    previews=("faces",),
)
