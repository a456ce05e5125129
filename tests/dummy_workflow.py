"""The ComfyUI side of test_method_registry's dummy method, as a plugin's `workflow.py` would be: one node class of
its own (DummyPaint: a MODEL patch with a shade and a palette file) and the rule mapping it onto the method."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from idforge.comfy.catalog import ComfySupport, MethodRule
from idforge.comfy.generation import PlannedGeneration, PlannedModel, SamplerInputs
from idforge.comfy.nodes import NodeContext, NodeTable
from idforge.comfy.values import IdentityPatch, ImageRef, Model
from idforge.comfy.widgets import Widget


@dataclass(frozen=True)
class DummyPatch(IdentityPatch):
    kind: ClassVar[str] = "Dummy"

    shade: float
    palette: str


NODES = NodeTable()


@NODES.node("DummyPaint", widgets=(Widget("shade", 128), Widget("palette", "palette.safetensors")))
def _paint(ctx: NodeContext) -> tuple[Any, ...]:
    model = ctx.get("model", Model)
    patch = DummyPatch(
        node=ctx.node_id,
        class_type=ctx.class_type,
        faces=(ctx.get("image", ImageRef),),
        mask=None,
        shade=ctx.number("shade", 128),
        palette=ctx.text("palette", "palette.safetensors"),
    )
    return (replace(model, patches=(*model.patches, patch)),)


def apply_dummy(inputs: SamplerInputs, gen: PlannedGeneration, patches: list[DummyPatch]) -> None:
    patch = patches[0]
    inputs.set("shade", int(patch.shade), patch.node, "shade")
    gen.images["face_image"] = patch.faces[0]
    gen.models["palette"] = PlannedModel(patch.node, "palette", patch.palette, "lora", "palette")


COMFY = ComfySupport(MethodRule(DummyPatch, apply_dummy), NODES)
