"""Insta Depth in ComfyUI: one InstantID Apply node (methods/instantid/workflow.py) plus a depth ControlNet
(ControlNetApplyAdvanced) on the positive conditioning. The ControlNet's image is the pose photo: idforge makes its
depth map and finds its face's keypoints, so a depth preprocessor node is refused with the advice to bypass it."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from idforge.comfy.catalog import ComfySupport, MethodRule
from idforge.comfy.generation import PlannedGeneration, PlannedModel, SamplerInputs, node_error
from idforge.comfy.nodes import NodeTable
from idforge.methods.instantid.workflow import InstantIDPatch, identity_values, instantid_models

DEPTH_PREPROCESSOR_HINT = (
    "idforge's own depth estimator can replace it: --set {node}.mode=4 (bypass) hands its input photo to the depth "
    "ControlNet and idforge makes the depth map"
)


def depth_preprocessor_hint(class_type: str) -> str | None:
    lowered = class_type.lower()
    if "depth" in lowered and ("preprocessor" in lowered or "zoe" in lowered or "midas" in lowered):
        return DEPTH_PREPROCESSOR_HINT
    return None


def _not_default(node: str, name: str, value: Any, default: Any) -> None:
    if value != default:
        raise node_error(
            node, name, f"{value!r}: insta-depth has no such setting here (only {default!r} is supported)"
        )


def apply_insta_depth(inputs: SamplerInputs, gen: PlannedGeneration, instantid: list[InstantIDPatch]) -> None:
    controls = inputs.positive.controls
    if len(instantid) > 1 or len(controls) > 1:
        node = instantid[1].node if len(instantid) > 1 else controls[1].node
        raise node_error(node, "positive", "Insta Depth takes one InstantID and one depth ControlNet")
    patch, control = instantid[0], controls[0]
    if "depth" not in PurePath(control.control_net.name).name.lower():
        raise node_error(
            control.node,
            "control_net",
            f"{control.control_net.name!r} is not a depth ControlNet: idforge runs "
            "depth ControlNets only (Insta Depth); the file name must say 'depth'",
        )
    instantid_models(inputs, patch, gen)
    depth = control.control_net
    gen.models["depth_controlnet"] = PlannedModel(
        depth.node, "control_net_name", depth.name, "controlnet", "depth_controlnet"
    )
    inputs.say(depth.node, "control_net_name", "depth ControlNet (models folder: controlnet/)", depth.name)
    identity_values(inputs, patch)
    for name, default in (("start_at", 0.0), ("end_at", 1.0), ("noise", 0.0), ("combine_embeds", "average")):
        if not (patch.class_type == "ApplyInstantID" and name == "noise"):
            _not_default(patch.node, name, getattr(patch, name), default)
    if patch.mask is not None:
        raise node_error(patch.node, "mask", "insta-depth has no mask")
    if len(patch.faces) > 1:
        raise node_error(patch.node, "image", "insta-depth takes one face image")
    if patch.image_kps is not None and patch.image_kps != control.image:
        raise node_error(
            patch.node,
            "image_kps",
            "insta-depth takes its keypoints from the depth ControlNet's image: give both the same LoadImage",
        )
    _not_default(control.node, "start_percent", control.start_percent, 0.0)
    _not_default(control.node, "end_percent", control.end_percent, 1.0)
    inputs.set("depth_strength", control.strength, control.node, "strength", "depth_strength")
    gen.images["face_image"] = patch.faces[0]
    gen.images["pose_image"] = control.image
    inputs.say(patch.node, "image", "face_image", patch.faces[0].filename)
    inputs.say(
        control.node,
        "image",
        "pose_image (idforge estimates its depth map and finds its face's keypoints)",
        control.image.filename,
    )


COMFY = ComfySupport(
    MethodRule(InstantIDPatch, apply_insta_depth, control_net=True),
    NodeTable(hints=[depth_preprocessor_hint]),
)
