"""IP-Adapter FaceID in the method registry: its body, inputs, request and output count."""

from __future__ import annotations

from typing import Any

from idforge.methods.faceid.body import FaceIDBody
from idforge.methods.faceid.cli import COMMAND_LINE
from idforge.methods.registry import FaceSearch, ImageInput, Method, MethodCall, lazy


def build_request(call: MethodCall) -> Any:
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest

    p, o = call.params, call.options  # o: the command line's own (files, face choice, InstantID on top)
    return call.request(
        FaceIDRequest,
        faceid=call.parameters(FaceIDParams, skip_missing=o.get("skip_missing", False)),
        negative_image=call.image("negative_image"),
        attn_mask=call.image("mask_image"),
        # the command line's --adapter, None there = the base family's default; HTTP: the body's name
        adapter=o["adapter"] if "adapter" in o else p["adapter"],
        lora=o.get("lora"),
        clip_vision=o.get("clip_vision"),
        face_models=o.get("face_models"),
        instantid=o.get("instantid"),
    )


def check(call: MethodCall) -> None:
    """Best-of-N not in batch mode, and a reference face or persons (regions checked when the size is given):
    before anything is queued or charged, from the CLI and HTTP alike."""
    from idforge.methods.adapter_persons import check_adapter_call
    from idforge.methods.faceid.core import check_best_of
    from idforge.methods.faceid.persons import check_faceid_persons

    check_best_of(call.generation.best_of, call.params["batch"])
    check_adapter_call(call, build_request, check_faceid_persons)


def from_recipe(call: Any) -> Any:
    """The request a recipe records (methods/reproduce.py), with its InstantID part for FaceID + InstantID."""
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.instantid.method import from_recipe as instantid_from_recipe

    lora = (call.recipe.models.get("lora") or {}).get("source")
    instantid = None
    if call.recipe.method == "instantid+faceid":
        instantid = instantid_from_recipe(call, call.recipe.sections.get("instantid") or {})
    return call.request(
        FaceIDRequest,
        faceid=call.params(FaceIDParams),
        adapter=call.model("ip_adapter"),
        lora=None if lora in (None, "embedded") else call.model("lora"),  # embedded: the adapter file's own
        instantid=instantid,
    )


def outputs(body: Any) -> int:
    """FaceID's batch rule: one output per reference, at least num_images."""
    references = 1 + len(body.extra_face_images)
    return max(body.num_images, references) if body.batch else body.num_images


METHOD = Method(
    name="faceid",
    title="FaceID",
    summary="IP-Adapter FaceID (batch included)",
    body=FaceIDBody,
    images=(
        ImageInput(
            "face_image",
            "--face",
            "reference face or a folder of them (repeatable)",
            extra="extra_face_images",
        ),
        ImageInput("negative_image", "--negative-image", "CLIP negative (plus models)"),
        ImageInput("mask_image", "--attn-mask", "restrict FaceID to this area"),
    ),
    build_request=build_request,
    run=lazy("idforge.methods.faceid.generate", "generate_faceid"),
    cli=COMMAND_LINE,
    check=check,
    outputs=outputs,
    from_recipe=from_recipe,
    recipe_methods=("faceid", "instantid+faceid"),
    workflow="idforge.methods.faceid.workflow",
    previews=("faces",),
    face_search=FaceSearch(
        pack="buffalo_l", pick="score"
    ),  # FaceID's reference takes the most confident face
)
