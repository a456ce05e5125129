"""PuLID's ComfyUI nodes (cubiq's PuLID_ComfyUI): PulidModelLoader, PulidEvaClipLoader, PulidInsightFaceLoader,
ApplyPulid and ApplyPulidAdvanced, mapped onto the `pulid` method like the built-in nodes (registered through
`nodes.register`, `widgets.register_widgets` and `plan.register_method_rule`).

ApplyPulid's `method` becomes the body's `method` (fidelity / style / neutral); ApplyPulidAdvanced's `projection`
and `fidelity` (zero tokens) become the body's `projection` and `fidelity`, its `noise` the body's `noise`. One
ApplyPulid per image gives one reference set; several, each with an `attn_mask`, give several persons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from idforge.workflow import nodes as N
from idforge.workflow.plan import (
    PlannedGeneration,
    PlannedPerson,
    SamplerInputs,
    mask_png,
    node_error,
    register_method_rule,
    set_references,
)
from idforge.workflow.widgets import Widget, register_widgets


@dataclass(frozen=True)
class PulidModel:
    node: str
    file: str


@dataclass(frozen=True)
class EvaClip:
    node: str


@dataclass(frozen=True)
class PulidPatch(N.IdentityPatch):
    class_type: str
    model: PulidModel
    faces: tuple[N.ImageRef, ...]
    mask: N.Mask | None
    values: tuple[
        tuple[str, Any], ...
    ]  # body parameters as the node says (method or projection/fidelity, ...)


register_widgets("PulidModelLoader", (Widget("pulid_file"),))
register_widgets("PulidEvaClipLoader", ())
register_widgets("PulidInsightFaceLoader", (Widget("provider", "CPU"),))
register_widgets(
    "ApplyPulid",
    (Widget("method", "fidelity"), Widget("weight", 1.0), Widget("start_at", 0.0), Widget("end_at", 1.0)),
)
register_widgets(
    "ApplyPulidAdvanced",
    (
        Widget("weight", 1.0),
        Widget("projection", "ortho_v2"),
        Widget("fidelity", 8),
        Widget("noise", 0.0),
        Widget("start_at", 0.0),
        Widget("end_at", 1.0),
    ),
)


@N.register("PulidModelLoader")
def _model_loader(ctx: N.NodeContext) -> tuple[Any, ...]:
    return (PulidModel(ctx.node_id, ctx.text("pulid_file")),)


@N.register("PulidEvaClipLoader")
def _eva_loader(ctx: N.NodeContext) -> tuple[Any, ...]:
    ctx.note("(class)", "EVA02-CLIP-L-14-336 from the models store (models/clip)", "EVA02-CLIP-L-14-336")
    return (EvaClip(ctx.node_id),)


@N.register("PulidInsightFaceLoader")
def _insightface(ctx: N.NodeContext) -> tuple[Any, ...]:
    provider = ctx.text("provider", "CPU")
    ctx.note(
        "provider", "ignored: idforge runs face analysis on the engine's device (pack antelopev2)", provider
    )
    return (N.FaceAnalysis(ctx.node_id, provider),)


def _apply(ctx: N.NodeContext, advanced: bool) -> tuple[Any, ...]:
    loader = ctx.get("pulid", PulidModel)
    ctx.get("eva_clip", EvaClip)
    ctx.get("face_analysis", N.FaceAnalysis)
    model = ctx.get("model", N.Model)
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
        faces=N.faces_of(ctx.get("image", (N.ImageRef, N.ImageList))),
        mask=ctx.get("attn_mask", N.Mask, optional=True),
        values=tuple(values.items()),
    )
    return (replace(model, patches=(*model.patches, patch)),)


N.register("ApplyPulid", lambda ctx: _apply(ctx, advanced=False))
N.register("ApplyPulidAdvanced", lambda ctx: _apply(ctx, advanced=True))


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


def pulid_rule(inputs: SamplerInputs, gen: PlannedGeneration) -> bool:
    patches = inputs.patches()
    pulid = [p for p in patches if isinstance(p, PulidPatch)]
    if not pulid:
        return False
    if len(pulid) != len(patches):
        other = next(p for p in patches if not isinstance(p, PulidPatch))
        raise node_error(other.node, "model", "idforge runs PuLID without other identity nodes on one image")
    if inputs.positive.controls:
        raise node_error(
            inputs.positive.controls[0].node, "control_net", "idforge's PuLID takes no ControlNet"
        )
    first = pulid[0]
    gen.method = "pulid"
    gen.models["pulid"] = (first.model.node, first.model.file)
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
        set_references(inputs, gen, first.node, first.faces, first.mask, "attn_mask")
        return True
    for index, patch in enumerate(pulid):
        if patch.mask is None:
            raise node_error(
                patch.node, "attn_mask", "several ApplyPulid nodes in one image need an attn_mask each"
            )
        values = dict(patch.values)
        gen.persons.append(
            PlannedPerson(
                faces=list(patch.faces),
                mask_png=mask_png(patch.mask),
                values={
                    "ip_weight": values["weight"],
                    "start_at": values["start_at"],
                    "end_at": values["end_at"],
                },
                node=patch.node,
            )
        )
        inputs.say(
            patch.node, "image/attn_mask/weight", f"persons[{index}]", [f.filename for f in patch.faces]
        )
    return True


register_method_rule(pulid_rule)
