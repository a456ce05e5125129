"""ComfyUI's own node classes idforge reads (`CORE`): checkpoint, LoRA, prompts, latent, samplers, VAE decode,
outputs, images, ControlNet, masks and primitives. Their widget orders are widgets.CORE_WIDGETS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from idforge.comfy.nodes import Handler, NodeContext, NodeTable
from idforge.comfy.values import (
    Clip,
    Conditioning,
    ControlApply,
    ControlNet,
    Decoded,
    FaceAnalysis,
    ImageList,
    ImageRef,
    Latent,
    Lora,
    Mask,
    Model,
    NotSupported,
    Sampled,
    Vae,
)
from idforge.comfy.widgets import CORE_WIDGETS
from idforge.errors import ParameterError

CORE = NodeTable(widgets=dict(CORE_WIDGETS))


@CORE.node("CheckpointLoaderSimple")
def _checkpoint(ctx: NodeContext) -> tuple[Any, ...]:
    name = ctx.text("ckpt_name")
    ctx.note("ckpt_name", "base model (models folder: checkpoints/)", name)
    return Model(name, ctx.node_id), Clip(name), Vae(name)


@CORE.node("LoraLoader")
def _lora(ctx: NodeContext) -> tuple[Any, ...]:
    model = ctx.get("model", Model)
    clip = ctx.get("clip", Clip, optional=True)
    lora = Lora(
        ctx.node_id,
        ctx.text("lora_name"),
        ctx.number("strength_model", 1.0),
        ctx.number("strength_clip", 1.0),
    )
    ctx.note("lora_name", "LoRA (models folder: loras/)", lora.name)
    ctx.note("strength_model", "LoRA strength", lora.strength_model)
    out_clip = replace(clip, loras=(*clip.loras, lora)) if clip is not None else None
    return replace(model, loras=(*model.loras, lora)), out_clip


@CORE.node("CLIPTextEncode")
def _text(ctx: NodeContext) -> tuple[Any, ...]:
    ctx.get("clip", Clip)
    text = ctx.text("text", "")
    return (Conditioning(text, (ctx.node_id,)),)


@CORE.node("ConditioningCombine")
def _combine(ctx: NodeContext) -> tuple[Any, ...]:
    first = ctx.get("conditioning_1", Conditioning)
    second = ctx.get("conditioning_2", Conditioning)
    if first.text != second.text:
        raise ParameterError(
            f"{ctx.node_id}.conditioning_2",
            "ConditioningCombine of two different prompts has no idforge equivalent (combine identities that share "
            "one prompt: several ApplyInstantID with masks)",
            field=f"{ctx.node_id}.conditioning_2",
        )
    patches = first.patches + tuple(p for p in second.patches if p not in first.patches)
    controls = first.controls + tuple(c for c in second.controls if c not in first.controls)
    nodes = tuple(dict.fromkeys(first.text_nodes + second.text_nodes))
    return (Conditioning(first.text, nodes, patches, controls),)


@CORE.node("EmptyLatentImage")
def _latent(ctx: NodeContext) -> tuple[Any, ...]:
    latent = Latent(
        ctx.node_id, int(ctx.number("width")), int(ctx.number("height")), int(ctx.number("batch_size", 1))
    )
    return (latent,)


@CORE.node("KSampler", "KSamplerAdvanced")
def _sampler(ctx: NodeContext) -> tuple[Any, ...]:
    return (Sampled(ctx.node_id),)


@CORE.node("VAEDecode")
def _decode(ctx: NodeContext) -> tuple[Any, ...]:
    samples = ctx.get("samples", Sampled)
    ctx.get("vae", Vae)
    return (Decoded(samples.sampler, ctx.node_id),)


@CORE.node("SaveImage", "PreviewImage", output=True)
def _output(ctx: NodeContext) -> tuple[Any, ...]:
    return ()


@CORE.node("LoadImage")
def _load_image(ctx: NodeContext) -> tuple[Any, ...]:
    ref = ImageRef(ctx.node_id, ctx.text("image"))
    ctx.note(
        "image",
        f"an input image (a file, --set {ctx.node_id}.image=PATH, or HTTP images.{ctx.node_id})",
        ref.filename,
    )
    return ref, NotSupported(ctx.node_id, "LoadImage's MASK output (use SolidMask / MaskComposite)")


@CORE.node("ImageBatch")
def _image_batch(ctx: NodeContext) -> tuple[Any, ...]:
    return (ImageList((*ctx.images("image1"), *ctx.images("image2"))),)


def insightface_loader(pack: str | None = None) -> Handler:
    """The handler of a node pack's InsightFace loader (InstantID's, IP-Adapter's, PuLID's): its provider is
    ignored, idforge finds faces on the engine's device (with `pack`, the face pack the method uses)."""
    said = "ignored: idforge runs face analysis on the engine's device" + (f" (pack {pack})" if pack else "")

    def load(ctx: NodeContext) -> tuple[Any, ...]:
        provider = ctx.text("provider", "CPU")
        ctx.note("provider", said, provider)
        return (FaceAnalysis(ctx.node_id, provider),)

    return load


@CORE.node("ControlNetLoader")
def _controlnet(ctx: NodeContext) -> tuple[Any, ...]:
    return (ControlNet(ctx.node_id, ctx.text("control_net_name")),)


@CORE.node("ControlNetApplyAdvanced")
def _control_apply(ctx: NodeContext) -> tuple[Any, ...]:
    positive = ctx.get("positive", Conditioning)
    negative = ctx.get("negative", Conditioning)
    control = ControlApply(
        ctx.node_id,
        ctx.get("control_net", ControlNet),
        ctx.get("image", ImageRef),
        ctx.number("strength", 1.0),
        ctx.number("start_percent", 0.0),
        ctx.number("end_percent", 1.0),
    )
    return (
        replace(positive, controls=(*positive.controls, control)),
        replace(negative, controls=(*negative.controls, control)),
    )


@CORE.node("SolidMask")
def _solid_mask(ctx: NodeContext) -> tuple[Any, ...]:
    width, height = int(ctx.number("width", 512)), int(ctx.number("height", 512))
    if not (1 <= width <= 4096 and 1 <= height <= 4096):
        raise ParameterError(
            f"{ctx.node_id}.width",
            f"mask size {width}x{height} is out of range",
            field=f"{ctx.node_id}.width",
        )
    value = float(ctx.number("value", 1.0))
    return (Mask(np.full((height, width), value, np.float32), (ctx.node_id,)),)


MASK_OPERATIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "multiply": lambda d, s: d * s,
    "add": lambda d, s: d + s,
    "subtract": lambda d, s: d - s,
    "and": lambda d, s: np.logical_and(d > 0.5, s > 0.5).astype(np.float32),
    "or": lambda d, s: np.logical_or(d > 0.5, s > 0.5).astype(np.float32),
    "xor": lambda d, s: np.logical_xor(d > 0.5, s > 0.5).astype(np.float32),
}


@CORE.node("MaskComposite")
def _mask_composite(ctx: NodeContext) -> tuple[Any, ...]:
    destination = ctx.get("destination", Mask)
    source = ctx.get("source", Mask)
    operation = ctx.text("operation", "multiply")
    if operation not in MASK_OPERATIONS:
        raise ParameterError(
            f"{ctx.node_id}.operation",
            f"{operation!r} is not one of {', '.join(MASK_OPERATIONS)}",
            field=f"{ctx.node_id}.operation",
        )
    x, y = int(ctx.number("x", 0)), int(ctx.number("y", 0))
    out = destination.array.copy()
    height, width = out.shape
    src = source.array
    # the part of the source that lands inside the destination (ComfyUI clips the same way)
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + src.shape[0], height), min(x + src.shape[1], width)
    if bottom > top and right > left:
        region = out[top:bottom, left:right]
        piece = src[top - y : bottom - y, left - x : right - x]
        out[top:bottom, left:right] = MASK_OPERATIONS[operation](region, piece)
    return (Mask(np.clip(out, 0.0, 1.0), (*destination.nodes, *source.nodes, ctx.node_id)),)


@CORE.node("InvertMask")
def _invert_mask(ctx: NodeContext) -> tuple[Any, ...]:
    mask = ctx.get("mask", Mask)
    return (Mask(1.0 - mask.array, (*mask.nodes, ctx.node_id)),)


@CORE.node(
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean"
)
def _primitive(ctx: NodeContext) -> tuple[Any, ...]:
    """comfy-core's Primitive* nodes (real nodes, unlike the front end's PrimitiveNode): their value."""
    return (ctx.get("value"),)
