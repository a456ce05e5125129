"""Insta Depth in the method registry: its body (seed 002), inputs, request and the depth map it returns."""

from __future__ import annotations

from typing import Any

from idforge.errors import check_window
from idforge.methods.insta_depth.body import InstaDepthBody
from idforge.methods.insta_depth.cli import COMMAND_LINE
from idforge.methods.registry import ImageInput, Method, MethodCall, lazy


def build_request(call: MethodCall) -> Any:
    from idforge.methods.insta_depth.generate import InstaDepthParams, InstaDepthRequest
    from idforge.methods.instantid.params import InstantIDParams

    return call.request(
        InstaDepthRequest,
        face=call.image("face_image"),
        pose=call.image("pose_image"),
        instantid=call.parameters(InstantIDParams),
        depth=call.parameters(InstaDepthParams),
        depth_map=call.image("depth_map"),
    )


def check(call: MethodCall) -> None:
    """The depth ControlNet's window in order, before anything is queued or charged (the server's own window check
    is the identity's start_at/end_at)."""
    check_window(
        call.params["depth_start_at"], call.params["depth_end_at"], ("depth_start_at", "depth_end_at")
    )


def extras(call: MethodCall, result: Any) -> dict[str, Any]:
    """The depth map, when the body asks for it."""
    depth = result.extras.get("depth_map")
    return {"depth_map": depth} if call.params.get("return_depth_map") and depth is not None else {}


def from_recipe(call: Any) -> Any:
    """The request a recipe records (methods/reproduce.py); older recipes name the face `face`."""
    from idforge.methods.insta_depth.generate import InstaDepthParams, InstaDepthRequest
    from idforge.methods.instantid.params import InstantIDParams

    inputs = call.recipe.inputs
    recorded = inputs.get("faces") or [{"image": inputs.get("face")}]
    given = call.given.get("faces")
    face = call.finder.faces(recorded[:1], None if given is None else list(given)[:1], "faces")[0]
    return call.request(
        InstaDepthRequest,
        face=face,
        pose=call.image("pose", required=True),
        instantid=call.params(InstantIDParams),
        depth=call.params(InstaDepthParams),
        instantid_model=call.instantid_folder(),
    )


METHOD = Method(
    name="insta-depth",
    title="Insta Depth",
    summary="Insta Depth: InstantID + depth ControlNet",
    body=InstaDepthBody,
    images=(
        ImageInput("face_image", "--face", "face photo giving the identity", required=True),
        ImageInput(
            "pose_image",
            "--pose",
            "photo giving the composition: its depth map and the keypoints of its face",
            required=True,
        ),
        ImageInput("depth_map", "--depth-map", "use this depth map instead of estimating one"),
    ),
    build_request=build_request,
    run=lazy("idforge.methods.insta_depth.generate", "generate_insta_depth"),
    cli=COMMAND_LINE,
    check=check,
    extras=extras,
    warm_up_images=("face_image", "pose_image"),
    previews=("faces", "keypoints", "depth"),
    from_recipe=from_recipe,
    recipe_methods=("insta_depth",),
    workflow="idforge.methods.insta_depth.workflow",
)
