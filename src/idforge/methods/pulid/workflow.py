"""PuLID's ComfyUI nodes (cubiq's PuLID_ComfyUI): PulidModelLoader, PulidEvaClipLoader, PulidInsightFaceLoader,
ApplyPulid and ApplyPulidAdvanced, and the rule mapping them onto the `pulid` method.

ApplyPulid's `method` becomes the body's `method` (fidelity / style / neutral); ApplyPulidAdvanced's `projection`
and `fidelity` (zero tokens) become the body's `projection` and `fidelity`, its `noise` the body's `noise`. One
ApplyPulid per image gives one reference set; several, each with an `attn_mask`, give several persons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePath
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
from idforge.comfy.values import FaceAnalysis, IdentityPatch, Mask, Model, ModelFile
from idforge.comfy.widgets import Widget


@dataclass(frozen=True)
class PulidModel(ModelFile):
    """PulidModelLoader's PuLID file."""


@dataclass(frozen=True)
class EvaClip:
    node: str


@dataclass(frozen=True)
class PulidPatch(IdentityPatch):
    kind: ClassVar[str] = "PuLID"

    model: PulidModel
    values: tuple[
        tuple[str, Any], ...
    ]  # body parameters as the node says (method or projection/fidelity, ...)


NODES = NodeTable()


@NODES.node("PulidModelLoader", widgets=(Widget("pulid_file"),))
def _model_loader(ctx: NodeContext) -> tuple[Any, ...]:
    return (PulidModel(ctx.node_id, ctx.text("pulid_file")),)


@NODES.node("PulidEvaClipLoader", widgets=())
def _eva_loader(ctx: NodeContext) -> tuple[Any, ...]:
    ctx.note("(class)", "EVA02-CLIP-L-14-336 from the models store (models/clip)", "EVA02-CLIP-L-14-336")
    return (EvaClip(ctx.node_id),)


NODES.add("PulidInsightFaceLoader", insightface_loader("antelopev2"), (Widget("provider", "CPU"),))


def _apply(ctx: NodeContext, advanced: bool) -> tuple[Any, ...]:
    loader = ctx.get("pulid", PulidModel)
    ctx.get("eva_clip", EvaClip)
    ctx.get("face_analysis", FaceAnalysis)
    model = ctx.get("model", Model)
    values: dict[str, Any] = {"weight": ctx.number("weight", 1.0)}
    if advanced:
        values["projection"] = ctx.text("projection", "ortho_v2")
        values["fidelity"] = int(ctx.number("fidelity", 8))
        values["noise"] = ctx.number("noise", 0.0)
    else:
        values["method"] = ctx.text("method", "fidelity")
    values["start_at"] = ctx.number("start_at", 0.0)
    values["end_at"] = ctx.number("end_at", 1.0)
    patch = PulidPatch(
        node=ctx.node_id,
        class_type=ctx.class_type,
        model=loader,
        faces=ctx.images("image"),
        mask=ctx.get("attn_mask", Mask, optional=True),
        values=tuple(values.items()),
    )
    return (replace(model, patches=(*model.patches, patch)),)


NODES.add(
    "ApplyPulid",
    lambda ctx: _apply(ctx, advanced=False),
    (Widget("method", "fidelity"), Widget("weight", 1.0), Widget("start_at", 0.0), Widget("end_at", 1.0)),
)
NODES.add(
    "ApplyPulidAdvanced",
    lambda ctx: _apply(ctx, advanced=True),
    (
        Widget("weight", 1.0),
        Widget("projection", "ortho_v2"),
        Widget("fidelity", 8),
        Widget("noise", 0.0),
        Widget("start_at", 0.0),
        Widget("end_at", 1.0),
    ),
)


def model_name(file_name: str) -> str | None:
    """The body's `model` for a published PuLID file name (None: an unknown name, the file still loads)."""
    stem = PurePath(file_name).name.lower()
    if "ip-adapter_pulid" in stem or "ip_adapter_pulid" in stem:
        return "pulid-comfyui"
    if "v1.1" in stem or "v1_1" in stem:
        return "pulid-v1.1"
    if "pulid_v1" in stem or "pulid-v1" in stem:
        return "pulid-v1"
    return None


def apply_pulid(inputs: SamplerInputs, gen: PlannedGeneration, pulid: list[PulidPatch]) -> None:
    first = pulid[0]
    gen.models["pulid"] = PlannedModel(first.model.node, "pulid_file", first.model.file, "pulid", "model")
    inputs.say(first.model.node, "pulid_file", "PuLID model (models folder: pulid/)", first.model.file)
    named = model_name(first.model.file)
    if named is not None:
        inputs.set("model", named, first.model.node, "pulid_file")
    shared = {name: value for name, value in first.values if name not in ("weight", "start_at", "end_at")}
    for patch in pulid[1:]:
        if patch.model != first.model or dict(patch.values).keys() != dict(first.values).keys():
            raise node_error(patch.node, "pulid", "every person must use the same PuLID model and node class")
        for name, value in shared.items():
            if dict(patch.values)[name] != value:
                raise node_error(patch.node, name, f"every person of one image shares {name} in idforge")
    for name, value in shared.items():
        inputs.set(name, value, first.node, name)
    if len(pulid) == 1:
        for name in ("weight", "start_at", "end_at"):
            inputs.set(name, dict(first.values)[name], first.node, name)
        set_references(inputs, gen, first, "attn_mask")
        return
    for patch in pulid:
        if patch.mask is None:
            raise node_error(
                patch.node, "attn_mask", "several ApplyPulid nodes in one image need an attn_mask each"
            )
        values = dict(patch.values)
        person = {"ip_weight": values["weight"], "start_at": values["start_at"], "end_at": values["end_at"]}
        add_person(inputs, gen, patch, patch.mask, person, "image/attn_mask/weight")


COMFY = ComfySupport(MethodRule(PulidPatch, apply_pulid), NODES)
