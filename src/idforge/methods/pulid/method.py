"""PuLID in the method registry: its body, inputs, request and checks."""

from __future__ import annotations

from typing import Any

from idforge.methods.pulid.body import PulidBody
from idforge.methods.pulid.cli import COMMAND_LINE
from idforge.methods.registry import ImageInput, Method, MethodCall, lazy


def build_request(call: MethodCall) -> Any:
    from idforge.methods.pulid.core import PulidParams, PulidRequest

    return call.request(
        PulidRequest,
        pulid=call.parameters(PulidParams),
        attn_mask=call.image("mask_image"),
        model=call.params["model"],
    )


def check(call: MethodCall) -> None:
    """face_image or persons (regions checked when the size is given), before anything is queued or charged."""
    from idforge.methods.adapter_persons import check_adapter_call
    from idforge.methods.pulid.persons import check_pulid_persons

    check_adapter_call(call, build_request, check_pulid_persons)


def from_recipe(call: Any) -> Any:
    """The request a recipe records (methods/reproduce.py): its models and mask by the request's names, the
    PuLID checkpoint as role `pulid`."""
    from idforge.methods.pulid.core import PulidParams, PulidRequest

    return call.request(PulidRequest, pulid=call.params(PulidParams), model=call.model("pulid"))


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
    cli=COMMAND_LINE,
    check=check,
    previews=("faces",),
    from_recipe=from_recipe,
    workflow="idforge.methods.pulid.workflow",
)
