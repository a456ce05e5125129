"""The node classes idforge understands: a table class_type -> handler, and the values handlers pass along.

A handler gets a `NodeContext` (its node's inputs, linked ones evaluated on demand) and returns the node's outputs
as a tuple, in the node's output order, of the symbolic values below: no tensors, no models, only what the node
says (file names, numbers, texts, references to LoadImage nodes, masks as small arrays). `plan.py` reads the values
reaching each KSampler and turns them into one method call.

Extension point: a later method (PuLID, ...) adds its node classes with `register("ApplyPulid", handler)` (and
`widgets.register_widgets` for their widget order), returning an `IdentityPatch` subclass on the MODEL it patches;
`plan.register_method_rule` then maps the patches reaching a KSampler onto its method. Unknown classes are refused
by the planner (every one at once, with node id and title), before any model loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from idforge.errors import ParameterError

# -- the values -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """A LoadImage node's image (the file it names; the actual image is given when the workflow runs)."""

    node: str
    filename: str


@dataclass(frozen=True)
class ImageList:
    images: tuple[ImageRef, ...]


@dataclass(frozen=True)
class Mask:
    """A mask computed from SolidMask / MaskComposite / InvertMask: values 0..1, (height, width)."""

    array: np.ndarray = field(compare=False)
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Lora:
    node: str
    name: str
    strength_model: float
    strength_clip: float


@dataclass(frozen=True)
class IdentityPatch:
    """A node that adds an identity to the model (and, for InstantID, to the conditioning)."""

    node: str


@dataclass(frozen=True)
class InstantIDPatch(IdentityPatch):
    class_type: str
    instantid_file: str
    instantid_node: str
    control_net: ControlNet
    faces: tuple[ImageRef, ...]
    image_kps: ImageRef | None
    mask: Mask | None
    ip_weight: float
    cn_strength: float
    start_at: float
    end_at: float
    noise: float
    combine_embeds: str


@dataclass(frozen=True)
class FaceIDPatch(IdentityPatch):
    class_type: str
    adapter: IPAdapter
    faces: tuple[ImageRef, ...]
    negative: ImageRef | None
    mask: Mask | None
    values: tuple[tuple[str, Any], ...]  # weight, weight_faceidv2, weight_type, ... as the node says

    @property
    def batch(self) -> bool:
        return self.class_type == "IPAAdapterFaceIDBatch"


@dataclass(frozen=True)
class Model:
    checkpoint: str
    checkpoint_node: str
    loras: tuple[Lora, ...] = ()
    patches: tuple[IdentityPatch, ...] = ()


@dataclass(frozen=True)
class Clip:
    checkpoint: str
    loras: tuple[Lora, ...] = ()


@dataclass(frozen=True)
class Vae:
    checkpoint: str


@dataclass(frozen=True)
class ControlNet:
    node: str
    name: str


@dataclass(frozen=True)
class ControlApply:
    node: str
    control_net: ControlNet
    image: ImageRef
    strength: float
    start_percent: float
    end_percent: float


@dataclass(frozen=True)
class Conditioning:
    text: str
    text_nodes: tuple[str, ...]
    patches: tuple[IdentityPatch, ...] = ()
    controls: tuple[ControlApply, ...] = ()


@dataclass(frozen=True)
class InstantIDModel:
    node: str
    file: str


@dataclass(frozen=True)
class FaceAnalysis:
    node: str
    provider: str


@dataclass(frozen=True)
class IPAdapter:
    """An IP-Adapter FaceID model: a file (IPAdapterModelLoader) or a preset (the unified loader)."""

    node: str
    file: str | None = None
    preset: str | None = None
    lora_strength: float | None = None  # the unified loader's


@dataclass(frozen=True)
class Latent:
    node: str
    width: int
    height: int
    batch_size: int


@dataclass(frozen=True)
class Sampled:
    """A KSampler's output latent."""

    sampler: str


@dataclass(frozen=True)
class Decoded:
    sampler: str
    decoder: str


# -- handlers -------------------------------------------------------------------------------------------------------


class NodeContext:
    """What a handler sees: its node's id, class, title and inputs; `get` evaluates a linked input."""

    def __init__(self, evaluate: Callable[[str, str], Any], node_id: str, node: dict[str, Any]) -> None:
        self._evaluate = evaluate
        self.node_id = node_id
        self.class_type = node["class_type"]
        self.inputs = node["inputs"]
        self.notes: list[tuple[str, str, Any]] = []  # (input, what it became, value), for --explain

    def has(self, name: str) -> bool:
        return name in self.inputs and self.inputs[name] is not None

    def get(self, name: str, kind: type | tuple[type, ...] | None = None, *, optional: bool = False) -> Any:
        if not self.has(name):
            if optional:
                return None
            raise ParameterError(
                f"{self.node_id}.{name}",
                f"{self.class_type} needs its input {name!r}",
                field=f"{self.node_id}.{name}",
            )
        value = self._evaluate(self.node_id, name)
        if kind is not None and not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ParameterError(
                f"{self.node_id}.{name}",
                f"{self.class_type}.{name} gets {_describe(value)}, idforge expects {expected} here",
                field=f"{self.node_id}.{name}",
            )
        return value

    def number(self, name: str, default: float | None = None) -> float:
        value = self.get(name, optional=default is not None)
        if value is None:
            return float(default)  # type: ignore[arg-type]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(
                f"{self.node_id}.{name}", f"{value!r} is not a number", field=f"{self.node_id}.{name}"
            )
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value = self.get(name, optional=default is not None)
        if value is None:
            return str(default)
        if not isinstance(value, str):
            raise ParameterError(
                f"{self.node_id}.{name}", f"{value!r} is not text", field=f"{self.node_id}.{name}"
            )
        return value

    def note(self, name: str, target: str, value: Any) -> None:
        self.notes.append((name, target, value))


def _describe(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, str | int | float) else repr(value)


Handler = Callable[[NodeContext], tuple[Any, ...]]
HANDLERS: dict[str, Handler] = {}
OUTPUT_CLASSES = {"SaveImage", "PreviewImage"}
SAMPLER_CLASSES = {"KSampler", "KSamplerAdvanced"}
# classes refused with a hint of what to do instead
HINTS: dict[str, str] = {}
DEPTH_PREPROCESSOR_HINT = (
    "idforge's own depth estimator can replace it: --set {node}.mode=4 (bypass) hands its input photo to the depth "
    "ControlNet and idforge makes the depth map"
)


def register(class_type: str, handler: Handler | None = None, *, output: bool = False):
    """Add a node class (usable as a decorator); `output` marks an output node like SaveImage."""

    def add(function: Handler) -> Handler:
        HANDLERS[class_type] = function
        if output:
            OUTPUT_CLASSES.add(class_type)
        return function

    return add(handler) if handler is not None else add


def hint(class_type: str, node_id: str) -> str:
    if class_type in HINTS:
        return HINTS[class_type].format(node=node_id)
    lowered = class_type.lower()
    if "depth" in lowered and ("preprocessor" in lowered or "zoe" in lowered or "midas" in lowered):
        return DEPTH_PREPROCESSOR_HINT.format(node=node_id)
    return ""


@register("CheckpointLoaderSimple")
def _checkpoint(ctx: NodeContext) -> tuple[Any, ...]:
    name = ctx.text("ckpt_name")
    ctx.note("ckpt_name", "base model (models folder: checkpoints/)", name)
    return Model(name, ctx.node_id), Clip(name), Vae(name)


@register("LoraLoader")
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


@register("CLIPTextEncode")
def _text(ctx: NodeContext) -> tuple[Any, ...]:
    ctx.get("clip", Clip)
    text = ctx.text("text", "")
    return (Conditioning(text, (ctx.node_id,)),)


@register("ConditioningCombine")
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


@register("EmptyLatentImage")
def _latent(ctx: NodeContext) -> tuple[Any, ...]:
    latent = Latent(
        ctx.node_id, int(ctx.number("width")), int(ctx.number("height")), int(ctx.number("batch_size", 1))
    )
    return (latent,)


@register("KSampler")
@register("KSamplerAdvanced")
def _sampler(ctx: NodeContext) -> tuple[Any, ...]:
    return (Sampled(ctx.node_id),)


@register("VAEDecode")
def _decode(ctx: NodeContext) -> tuple[Any, ...]:
    samples = ctx.get("samples", Sampled)
    ctx.get("vae", Vae)
    return (Decoded(samples.sampler, ctx.node_id),)


@register("SaveImage", output=True)
@register("PreviewImage", output=True)
def _output(ctx: NodeContext) -> tuple[Any, ...]:
    return ()


@register("LoadImage")
def _load_image(ctx: NodeContext) -> tuple[Any, ...]:
    ref = ImageRef(ctx.node_id, ctx.text("image"))
    ctx.note(
        "image",
        f"an input image (a file, --set {ctx.node_id}.image=PATH, or HTTP images.{ctx.node_id})",
        ref.filename,
    )
    return ref, _NotSupported(ctx.node_id, "LoadImage's MASK output (use SolidMask / MaskComposite)")


@dataclass(frozen=True)
class _NotSupported:
    node: str
    what: str


@register("ImageBatch")
def _image_batch(ctx: NodeContext) -> tuple[Any, ...]:
    images: list[ImageRef] = []
    for name in ("image1", "image2"):
        value = ctx.get(name, (ImageRef, ImageList))
        images.extend(value.images if isinstance(value, ImageList) else [value])
    return (ImageList(tuple(images)),)


def faces_of(value: ImageRef | ImageList) -> tuple[ImageRef, ...]:
    return value.images if isinstance(value, ImageList) else (value,)


@register("ControlNetLoader")
def _controlnet(ctx: NodeContext) -> tuple[Any, ...]:
    return (ControlNet(ctx.node_id, ctx.text("control_net_name")),)


@register("ControlNetApplyAdvanced")
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


@register("InstantIDModelLoader")
def _instantid_loader(ctx: NodeContext) -> tuple[Any, ...]:
    return (InstantIDModel(ctx.node_id, ctx.text("instantid_file")),)


@register("InstantIDFaceAnalysis")
def _instantid_faces(ctx: NodeContext) -> tuple[Any, ...]:
    provider = ctx.text("provider", "CPU")
    ctx.note(
        "provider", "ignored: idforge runs face analysis on the engine's device (pack antelopev2)", provider
    )
    return (FaceAnalysis(ctx.node_id, provider),)


def _apply_instantid(ctx: NodeContext, advanced: bool) -> tuple[Any, ...]:
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
        faces=faces_of(ctx.get("image", (ImageRef, ImageList))),
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


register("ApplyInstantID", lambda ctx: _apply_instantid(ctx, advanced=False))
register("ApplyInstantIDAdvanced", lambda ctx: _apply_instantid(ctx, advanced=True))


@register("IPAdapterUnifiedLoaderFaceID")
def _unified_faceid(ctx: NodeContext) -> tuple[Any, ...]:
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


@register("IPAdapterModelLoader")
def _ipadapter_loader(ctx: NodeContext) -> tuple[Any, ...]:
    return (IPAdapter(ctx.node_id, file=ctx.text("ipadapter_file")),)


@register("IPAdapterInsightFaceLoader")
def _insightface(ctx: NodeContext) -> tuple[Any, ...]:
    provider = ctx.text("provider", "CPU")
    ctx.note("provider", "ignored: idforge runs face analysis on the engine's device", provider)
    return (FaceAnalysis(ctx.node_id, provider),)


FACEID_VALUES = (
    ("weight", 1.0),
    ("weight_faceidv2", 1.0),
    ("weight_type", "linear"),
    ("combine_embeds", "concat"),
    ("start_at", 0.0),
    ("end_at", 1.0),
    ("embeds_scaling", "V only"),
)


def _apply_faceid(ctx: NodeContext) -> tuple[Any, ...]:
    model = ctx.get("model", Model)
    adapter = ctx.get("ipadapter", IPAdapter)
    ctx.get("insightface", FaceAnalysis, optional=True)
    if ctx.has("clip_vision"):
        ctx.get("clip_vision")
    values = tuple(
        (name, ctx.get(name, optional=True) if ctx.has(name) else default) for name, default in FACEID_VALUES
    )
    patch = FaceIDPatch(
        node=ctx.node_id,
        class_type=ctx.class_type,
        adapter=adapter,
        faces=faces_of(ctx.get("image", (ImageRef, ImageList))),
        negative=ctx.get("image_negative", ImageRef, optional=True),
        mask=ctx.get("attn_mask", Mask, optional=True),
        values=values,
    )
    return replace(model, patches=(*model.patches, patch)), None


register("IPAdapterFaceID", _apply_faceid)
register("IPAAdapterFaceIDBatch", _apply_faceid)


@register("SolidMask")
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


@register("MaskComposite")
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


def _primitive(ctx: NodeContext) -> tuple[Any, ...]:
    """comfy-core's Primitive* nodes (real nodes, unlike the front end's PrimitiveNode): their value."""
    return (ctx.get("value"),)


for _name in (
    "PrimitiveInt",
    "PrimitiveFloat",
    "PrimitiveString",
    "PrimitiveStringMultiline",
    "PrimitiveBoolean",
):
    register(_name, _primitive)


@register("InvertMask")
def _invert_mask(ctx: NodeContext) -> tuple[Any, ...]:
    mask = ctx.get("mask", Mask)
    return (Mask(1.0 - mask.array, (*mask.nodes, ctx.node_id)),)
