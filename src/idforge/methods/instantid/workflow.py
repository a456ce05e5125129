"""InstantID's ComfyUI nodes (cubiq's ComfyUI_InstantID): InstantIDModelLoader, InstantIDFaceAnalysis,
ApplyInstantID and ApplyInstantIDAdvanced, and the rule mapping them onto the `instantid` method.

One Apply node per image gives one reference set; several, each with a mask, give several persons. "Apply
InstantID" has one weight for both halves and a fixed noise of 0.35. With a ControlNet on the conditioning the
same nodes are Insta Depth's (methods/insta_depth/workflow.py, which shares `instantid_models` and
`identity_values`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from idforge.comfy.catalog import ComfySupport, MethodRule
from idforge.comfy.core_nodes import insightface_loader
from idforge.comfy.generation import (
    PlannedGeneration,
    PlannedModel,
    SamplerInputs,
    add_person,
    node_error,
    set_references,
)
from idforge.comfy.nodes import NodeContext, NodeTable
from idforge.comfy.values import (
    Conditioning,
    ControlNet,
    FaceAnalysis,
    IdentityPatch,
    ImageRef,
    Mask,
    Model,
    ModelFile,
)
from idforge.comfy.widgets import Widget


@dataclass(frozen=True)
class InstantIDModel(ModelFile):
    """InstantIDModelLoader's ip-adapter file."""


@dataclass(frozen=True)
class InstantIDPatch(IdentityPatch):
    kind: ClassVar[str] = "InstantID"

    instantid_file: str
    instantid_node: str
    control_net: ControlNet
    image_kps: ImageRef | None
    ip_weight: float
    cn_strength: float
    start_at: float
    end_at: float
    noise: float
    combine_embeds: str


NODES = NodeTable()


@NODES.node("InstantIDModelLoader", widgets=(Widget("instantid_file"),))
def _loader(ctx: NodeContext) -> tuple[Any, ...]:
    return (InstantIDModel(ctx.node_id, ctx.text("instantid_file")),)


NODES.add("InstantIDFaceAnalysis", insightface_loader("antelopev2"), (Widget("provider", "CPU"),))


def _apply(ctx: NodeContext, advanced: bool) -> tuple[Any, ...]:
    loader = ctx.get("instantid", InstantIDModel)
    ctx.get("insightface", FaceAnalysis)
    model = ctx.get("model", Model)
    positive = ctx.get("positive", Conditioning)
    negative = ctx.get("negative", Conditioning)
    kps = ctx.get("image_kps", ImageRef, optional=True)
    mask = ctx.get("mask", Mask, optional=True)
    if advanced:
        ip_weight, cn_strength = ctx.number("ip_weight", 0.8), ctx.number("cn_strength", 0.8)
        noise, combine = ctx.number("noise", 0.0), ctx.text("combine_embeds", "average")
    else:  # "Apply InstantID": one weight for both halves, and the node's fixed noise of 0.35
        ip_weight = cn_strength = ctx.number("weight", 0.8)
        noise, combine = 0.35, "average"
    patch = InstantIDPatch(
        node=ctx.node_id,
        class_type=ctx.class_type,
        instantid_file=loader.file,
        instantid_node=loader.node,
        control_net=ctx.get("control_net", ControlNet),
        faces=ctx.images("image"),
        image_kps=kps,
        mask=mask,
        ip_weight=ip_weight,
        cn_strength=cn_strength,
        start_at=ctx.number("start_at", 0.0),
        end_at=ctx.number("end_at", 1.0),
        noise=noise,
        combine_embeds=combine,
    )
    return (
        replace(model, patches=(*model.patches, patch)),
        replace(positive, patches=(*positive.patches, patch)),
        replace(negative, patches=(*negative.patches, patch)),
    )


NODES.add(
    "ApplyInstantID",
    lambda ctx: _apply(ctx, advanced=False),
    (Widget("weight", 0.8), Widget("start_at", 0.0), Widget("end_at", 1.0)),
)
NODES.add(
    "ApplyInstantIDAdvanced",
    lambda ctx: _apply(ctx, advanced=True),
    (
        Widget("ip_weight", 0.8),
        Widget("cn_strength", 0.8),
        Widget("start_at", 0.0),
        Widget("end_at", 1.0),
        Widget("noise", 0.0),
        Widget("combine_embeds", "average"),
    ),
)


def instantid_models(inputs: SamplerInputs, patch: InstantIDPatch, gen: PlannedGeneration) -> None:
    """The InstantID files an Apply node names: IdentityNet and the ip-adapter, into the request's
    `instantid_model`."""
    control_net = patch.control_net
    gen.models["identitynet"] = PlannedModel(
        control_net.node, "control_net_name", control_net.name, "identitynet", "instantid_model.identitynet"
    )
    gen.models["instantid_ipadapter"] = PlannedModel(
        patch.instantid_node, "instantid_file", patch.instantid_file, "ipadapter", "instantid_model.ipadapter"
    )
    inputs.say(
        patch.instantid_node,
        "instantid_file",
        "InstantID ip-adapter (models folder: instantid/)",
        patch.instantid_file,
    )
    inputs.say(
        control_net.node, "control_net_name", "IdentityNet (models folder: controlnet/)", control_net.name
    )


def identity_values(inputs: SamplerInputs, patch: InstantIDPatch) -> None:
    if patch.class_type == "ApplyInstantID":
        inputs.set("ip_weight", patch.ip_weight, patch.node, "weight", "ip_weight")
        inputs.set("cn_strength", patch.cn_strength, patch.node, "weight", "cn_strength")
        inputs.say(patch.node, "(fixed by the node)", "noise", patch.noise)
    else:
        inputs.set("ip_weight", patch.ip_weight, patch.node, "ip_weight")
        inputs.set("cn_strength", patch.cn_strength, patch.node, "cn_strength")


def apply_instantid(inputs: SamplerInputs, gen: PlannedGeneration, instantid: list[InstantIDPatch]) -> None:
    instantid_models(inputs, instantid[0], gen)
    first = instantid[0]
    kps = {p.image_kps for p in instantid}
    if len(kps) > 1:
        raise node_error(
            instantid[1].node, "image_kps", "every InstantID node of one image must share its image_kps"
        )
    if first.image_kps is not None:
        gen.images["pose_image"] = first.image_kps
        inputs.say(
            first.node, "image_kps", "pose_image (its face gives the keypoints)", first.image_kps.filename
        )
    for patch in instantid[1:]:
        if (patch.instantid_file, patch.control_net.name) != (first.instantid_file, first.control_net.name):
            raise node_error(
                patch.node, "instantid", "every person must use the same InstantID model and IdentityNet"
            )
        for name in ("noise", "combine_embeds"):
            if getattr(patch, name) != getattr(first, name):
                raise node_error(patch.node, name, f"every person of one image shares {name} in idforge")
    inputs.set(
        "noise",
        first.noise,
        first.node,
        "noise" if first.class_type != "ApplyInstantID" else "(fixed by the node)",
    )
    inputs.set("combine_embeds", first.combine_embeds, first.node, "combine_embeds")
    if len(instantid) == 1:
        identity_values(inputs, first)
        inputs.set("start_at", first.start_at, first.node, "start_at")
        inputs.set("end_at", first.end_at, first.node, "end_at")
        set_references(inputs, gen, first, "mask")
        return
    for patch in instantid:
        if patch.mask is None:
            raise node_error(
                patch.node,
                "mask",
                "several InstantID nodes in one image need a mask each (one person's area)",
            )
        values = {
            "ip_weight": patch.ip_weight,
            "cn_strength": patch.cn_strength,
            "start_at": patch.start_at,
            "end_at": patch.end_at,
        }
        add_person(inputs, gen, patch, patch.mask, values, "image/mask/weights")


COMFY = ComfySupport(MethodRule(InstantIDPatch, apply_instantid), NODES)
