"""IP-Adapter FaceID's ComfyUI nodes (cubiq's ComfyUI_IPAdapter_plus): IPAdapterUnifiedLoaderFaceID,
IPAdapterModelLoader, IPAdapterInsightFaceLoader, IPAdapterFaceID and IPAAdapterFaceIDBatch, and the rule mapping
them onto the `faceid` method.

The adapter comes from a file (the model loader: its published name gives the body's `adapter`, the FaceID LoRA
next to it its `lora_strength`) or from the unified loader's preset (the file then depends on the base model's
family, known once the files are found: `on_models`). The batch node is the body's `batch`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any, ClassVar

from idforge.comfy.catalog import ComfySupport, MethodRule
from idforge.comfy.core_nodes import insightface_loader
from idforge.comfy.generation import (
    ModelsHook,
    PlannedGeneration,
    PlannedModel,
    SamplerInputs,
    node_error,
    set_references,
)
from idforge.comfy.nodes import NodeContext, NodeTable
from idforge.comfy.values import FaceAnalysis, IdentityPatch, ImageRef, Mask, Model
from idforge.comfy.widgets import Widget
from idforge.methods.faceid.body import FACEID_ADAPTERS


@dataclass(frozen=True)
class IPAdapter:
    """An IP-Adapter FaceID model: a file (IPAdapterModelLoader) or a preset (the unified loader)."""

    node: str
    file: str | None = None
    preset: str | None = None
    lora_strength: float | None = None  # the unified loader's


@dataclass(frozen=True)
class FaceIDPatch(IdentityPatch):
    kind: ClassVar[str] = "FaceID"

    adapter: IPAdapter
    negative: ImageRef | None
    values: tuple[tuple[str, Any], ...]  # weight, weight_faceidv2, weight_type, ... as the node says

    @property
    def batch(self) -> bool:
        return self.class_type == "IPAAdapterFaceIDBatch"


FACEID_WIDGETS = (
    Widget("weight", 1.0),
    Widget("weight_faceidv2", 1.0),
    Widget("weight_type", "linear"),
    Widget("combine_embeds", "concat"),
    Widget("start_at", 0.0),
    Widget("end_at", 1.0),
    Widget("embeds_scaling", "V only"),
)

NODES = NodeTable()


@NODES.node(
    "IPAdapterUnifiedLoaderFaceID",
    widgets=(Widget("preset", "FACEID PLUS V2"), Widget("lora_strength", 0.6), Widget("provider", "CPU")),
)
def _unified_loader(ctx: NodeContext) -> tuple[Any, ...]:
    model = ctx.get("model", Model)
    adapter = IPAdapter(
        ctx.node_id,
        preset=ctx.text("preset", "FACEID PLUS V2"),
        lora_strength=ctx.number("lora_strength", 0.6),
    )
    ctx.note(
        "provider", "ignored: idforge runs face analysis on the engine's device", ctx.inputs.get("provider")
    )
    return model, adapter


@NODES.node("IPAdapterModelLoader", widgets=(Widget("ipadapter_file"),))
def _model_loader(ctx: NodeContext) -> tuple[Any, ...]:
    return (IPAdapter(ctx.node_id, file=ctx.text("ipadapter_file")),)


NODES.add(
    "IPAdapterInsightFaceLoader",
    insightface_loader(),
    (Widget("provider", "CPU"), Widget("model_name", "buffalo_l")),
)


@NODES.node("IPAdapterFaceID", "IPAAdapterFaceIDBatch", widgets=FACEID_WIDGETS)
def _apply(ctx: NodeContext) -> tuple[Any, ...]:
    model = ctx.get("model", Model)
    adapter = ctx.get("ipadapter", IPAdapter)
    ctx.get("insightface", FaceAnalysis, optional=True)
    if ctx.has("clip_vision"):
        ctx.get("clip_vision")
    values = tuple(
        (widget.name, ctx.get(widget.name, optional=True) if ctx.has(widget.name) else widget.default)
        for widget in FACEID_WIDGETS
    )
    patch = FaceIDPatch(
        node=ctx.node_id,
        class_type=ctx.class_type,
        adapter=adapter,
        faces=ctx.images("image"),
        negative=ctx.get("image_negative", ImageRef, optional=True),
        mask=ctx.get("attn_mask", Mask, optional=True),
        values=values,
    )
    return replace(model, patches=(*model.patches, patch)), None


FACEID_PRESETS = {
    "FACEID": "faceid-{family}",
    "FACEID PLUS - SD1.5 only": "faceid-plus-sd15",
    "FACEID PLUS V2": "faceid-plusv2-{family}",
    "FACEID PORTRAIT (style transfer)": "faceid-portrait-{portrait}",
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": "faceid-portrait-sdxl-unnorm",
}
FACEID_ADAPTER_NAMES = frozenset(typing.get_args(FACEID_ADAPTERS))


def adapter_name(file_name: str) -> str:
    """The body's adapter name of a published FaceID file name (ip-adapter-faceid-plusv2_sdxl.bin -> faceid-plusv2-sdxl)."""
    stem = PurePath(file_name).stem.lower()
    return stem.removeprefix("ip-adapter-").replace("_", "-")


def preset_adapter(node: str, preset: str) -> ModelsHook:
    """The unified loader's preset -> the body's adapter name, once the base model's family is known."""

    def choose(gen: PlannedGeneration, paths: Mapping[str, str]) -> None:
        from idforge.models.comfy import pipeline_family

        family = pipeline_family(Path(paths["base"])) or "sdxl"
        portrait = "sdxl" if family == "sdxl" else "v11-sd15"
        gen.params["adapter"] = FACEID_PRESETS[preset].format(family=family, portrait=portrait)
        gen.sources["adapter"] = f"{node}.preset"

    return choose


def apply_faceid(inputs: SamplerInputs, gen: PlannedGeneration, faceid: list[FaceIDPatch]) -> None:
    if len(faceid) != 1:
        raise node_error(
            faceid[1].node, "model", "idforge runs one FaceID node per image, without other identity nodes"
        )
    patch = faceid[0]
    for name, value in patch.values:
        inputs.set(name, value, patch.node, name)
    inputs.set("batch", patch.batch, patch.node, "(class)", "batch (one reference per output)")
    adapter = patch.adapter
    if adapter.preset is not None:
        if adapter.preset not in FACEID_PRESETS:
            raise node_error(
                adapter.node,
                "preset",
                f"{adapter.preset!r} is not a FaceID preset ({', '.join(FACEID_PRESETS)})",
            )
        gen.on_models = preset_adapter(adapter.node, adapter.preset)
        inputs.set("lora_strength", adapter.lora_strength, adapter.node, "lora_strength")
        inputs.say(
            adapter.node, "preset", "adapter (the base model's family decides the file)", adapter.preset
        )
    else:
        _adapter_file(inputs, gen, adapter)
    set_references(inputs, gen, patch, "attn_mask")
    if patch.negative is not None:
        gen.images["negative_image"] = patch.negative
        inputs.say(patch.node, "image_negative", "negative_image", patch.negative.filename)


def _adapter_file(inputs: SamplerInputs, gen: PlannedGeneration, adapter: IPAdapter) -> None:
    """IPAdapterModelLoader's file (the request's `adapter`) and the FaceID LoRA loaded with it, if any (the
    request's `lora`, not merged as the other LoRAs are)."""
    file = adapter.file or ""
    gen.models["faceid_adapter"] = PlannedModel(adapter.node, "ipadapter_file", file, "ipadapter", "adapter")
    inputs.say(adapter.node, "ipadapter_file", "FaceID adapter (models folder: ipadapter/)", adapter.file)
    named = adapter_name(file)
    if named in FACEID_ADAPTER_NAMES:  # the body's name of a published file; the file itself is what loads
        gen.params["adapter"] = named
        gen.sources["adapter"] = f"{adapter.node}.ipadapter_file"
    face_lora = [lora for lora in inputs.model.loras if "faceid" in lora.name.lower()]
    if not face_lora:
        inputs.set("lora_strength", 0.0, adapter.node, "(no FaceID LoRA loaded)", "lora_strength")
        return
    lora = face_lora[-1]
    gen.models["faceid_lora"] = PlannedModel(lora.node, "lora_name", lora.name, "lora", "lora")
    gen.loras.remove(lora)
    inputs.set(
        "lora_strength", lora.strength_model, lora.node, "strength_model", "lora_strength (FaceID LoRA)"
    )


COMFY = ComfySupport(MethodRule(FaceIDPatch, apply_faceid), NODES)
