"""From a workflow graph to planned generations: one per KSampler that reaches a SaveImage or PreviewImage.

The planner evaluates the node handlers (nodes.py) backwards from the output nodes, then maps what reaches each
sampler onto a registered method: its name, its body's parameters (validated later as an HTTP body is), the images
by body field (references to LoadImage nodes), the people of a several-people image, and the model files named by
the graph (resolved by `run.py` through the ComfyUI folder resolver). A value the chosen method cannot express is
refused naming the node and input, never silently dropped. Every value used is recorded per node for `--explain`.

Rules (`METHOD_RULES`, first match wins; `register_method_rule` puts a later method's rule first):
one InstantID node (+ a depth ControlNet) -> insta-depth; one or more InstantID nodes (several: each with a mask)
-> instantid; one FaceID node -> faceid.
"""

from __future__ import annotations

import io
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np

from idforge.engine.params import MAX_SEED
from idforge.errors import ParameterError
from idforge.methods.faceid.body import FACEID_ADAPTERS
from idforge.workflow import nodes as N
from idforge.workflow.formats import Workflow, is_link, sorted_ids


class UnsupportedNodesError(ParameterError):
    """The workflow has node classes idforge cannot run (all of them listed)."""

    def __init__(self, unsupported: list[tuple[str, str, str, str]]) -> None:
        self.unsupported = unsupported
        parts = []
        for node_id, class_type, title, advice in unsupported:
            named = (
                f"node {node_id} {title!r} ({class_type})"
                if title != class_type
                else f"node {node_id} ({class_type})"
            )
            parts.append(named + (f": {advice}" if advice else ""))
        super().__init__(
            "workflow",
            f"{len(unsupported)} unsupported node{'s' if len(unsupported) > 1 else ''}: " + "; ".join(parts),
            field=f"{unsupported[0][0]}.class_type",
        )


def node_error(node: str, name: str, problem: str) -> ParameterError:
    return ParameterError(f"node {node} {name}", problem, field=f"{node}.{name}")


@dataclass
class ExplainLine:
    input: str
    target: str
    value: Any


@dataclass
class PlannedPerson:
    faces: list[N.ImageRef]
    mask_png: bytes
    values: dict[str, float]
    node: str


@dataclass
class PlannedGeneration:
    """One generation: a method, its body parameters (no images), images by field, people, models, outputs."""

    sampler: str
    method: str
    params: dict[str, Any]
    images: dict[str, Any]  # body field -> ImageRef | list[ImageRef] | PNG bytes (computed masks)
    sources: dict[str, str]  # body field -> "node.input" it came from (errors name it)
    outputs: list[str]  # SaveImage / PreviewImage node ids
    nodes: list[str]  # every node id that shaped it
    persons: list[PlannedPerson] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)  # role -> (node id, file name as the graph says)
    loras: list[N.Lora] = field(default_factory=list)
    scheduler: str = "euler"

    def image_refs(self) -> list[N.ImageRef]:
        refs: list[N.ImageRef] = []
        for value in self.images.values():
            refs.extend(
                v for v in (value if isinstance(value, list) else [value]) if isinstance(v, N.ImageRef)
            )
        for person in self.persons:
            refs.extend(person.faces)
        return refs


@dataclass
class Plan:
    workflow: Workflow
    generations: list[PlannedGeneration]
    explain: dict[str, list[ExplainLine]]

    def image_nodes(self) -> dict[str, str]:
        """LoadImage node id -> the file it names, for every image the generations use."""
        return {ref.node: ref.filename for gen in self.generations for ref in gen.image_refs()}

    def explain_text(self) -> str:
        lines = [f"workflow {self.workflow.name} ({self.workflow.format})"]
        for gen in self.generations:
            outputs = ", ".join(gen.outputs)
            lines.append(
                f"generation: KSampler {gen.sampler} -> idforge {gen.method} (outputs: node {outputs})"
            )
        for node_id in sorted_ids(self.explain):
            entries = self.explain[node_id]
            lines.append(
                f"node {node_id} {self.workflow.title(node_id)} ({self.workflow.graph[node_id]['class_type']})"
            )
            for entry in entries:
                lines.append(f"    {entry.input} = {entry.value!r} -> {entry.target}")
            if not entries:
                lines.append("    (structure only: no parameter)")
        return "\n".join(lines)


class _Evaluator:
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.outputs: dict[str, tuple[Any, ...]] = {}
        self.contexts: dict[str, N.NodeContext] = {}
        self.running: set[str] = set()

    def node_outputs(self, node_id: str) -> tuple[Any, ...]:
        if node_id in self.outputs:
            return self.outputs[node_id]
        if node_id in self.running:
            raise ParameterError(
                "workflow", f"node {node_id} feeds itself (a cycle)", field=f"{node_id}.class_type"
            )
        node = self.workflow.graph[node_id]
        ctx = N.NodeContext(self.input_value, node_id, node)
        self.contexts[node_id] = ctx
        self.running.add(node_id)
        try:
            result = N.HANDLERS[node["class_type"]](ctx)
        finally:
            self.running.discard(node_id)
        self.outputs[node_id] = result
        return result

    def input_value(self, node_id: str, name: str) -> Any:
        value = self.workflow.graph[node_id]["inputs"][name]
        if not is_link(value):
            return value
        source, slot = str(value[0]), int(value[1])
        if source not in self.workflow.graph:
            why = "a muted node" if source in self.workflow.muted else "a node that is not in the workflow"
            raise node_error(node_id, name, f"comes from {why} ({source})")
        outputs = self.node_outputs(source)
        produced = outputs[slot] if slot < len(outputs) else None
        if isinstance(produced, N._NotSupported):
            raise node_error(node_id, name, f"uses {produced.what}, which idforge does not support")
        if produced is None:
            kind = self.workflow.graph[source]["class_type"]
            raise node_error(
                node_id, name, f"uses output {slot} of node {source} ({kind}), which idforge does not support"
            )
        return produced

    def record(self, explain: dict[str, list[ExplainLine]]) -> None:
        for node_id, ctx in self.contexts.items():
            lines = explain.setdefault(node_id, [])
            for name, target, value in ctx.notes:
                lines.append(ExplainLine(name, target, value))


# -- samplers --------------------------------------------------------------------------------------------------------

SAMPLER_NAMES = {
    "euler": "euler",
    "euler_ancestral": "euler_a",
    "dpmpp_2m": "dpmpp_2m",
    "ddim": "ddim",
    "lcm": "lcm",
}
SCHEDULER_NAMES = {
    ("dpmpp_2m", "karras"): "dpmpp_2m_karras",
    ("ddim", "ddim_uniform"): "ddim",
    ("lcm", "sgm_uniform"): "lcm",
}


@dataclass
class SamplerInputs:
    """What reaches one sampler, and the note-taking of the planner for it."""

    node: str
    model: N.Model
    positive: N.Conditioning
    negative: N.Conditioning
    latent: N.Latent
    values: dict[str, Any]
    explain: dict[str, list[ExplainLine]]
    params: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, param: str, value: Any, node: str, name: str, target: str | None = None) -> None:
        """Body parameter `param` = value, from node.name (explained as `target`, default the parameter)."""
        self.params[param] = value
        self.sources[param] = f"{node}.{name}"
        self.say(node, name, target or param, value)

    def say(self, node: str, name: str, target: str, value: Any) -> None:
        self.explain.setdefault(node, []).append(ExplainLine(name, target, value))

    def patches(self) -> list[N.IdentityPatch]:
        found: dict[str, N.IdentityPatch] = {}
        for patch in (*self.model.patches, *self.positive.patches):
            found.setdefault(patch.node, patch)
        return list(found.values())


def _sampler_inputs(
    evaluator: _Evaluator, node_id: str, explain: dict[str, list[ExplainLine]]
) -> SamplerInputs:
    ctx = N.NodeContext(evaluator.input_value, node_id, evaluator.workflow.graph[node_id])
    inputs = SamplerInputs(
        node=node_id,
        model=ctx.get("model", N.Model),
        positive=ctx.get("positive", N.Conditioning),
        negative=ctx.get("negative", N.Conditioning),
        latent=ctx.get("latent_image", N.Latent),
        values={},
        explain=explain,
    )
    advanced = ctx.class_type == "KSamplerAdvanced"
    seed_name = "noise_seed" if advanced else "seed"
    inputs.values = {
        "seed": ctx.number(seed_name),
        "steps": ctx.number("steps", 20),
        "cfg": ctx.number("cfg", 8.0),
        "sampler_name": ctx.text("sampler_name", "euler"),
        "scheduler": ctx.text("scheduler", "normal"),
    }
    seed = int(inputs.values["seed"])
    if (
        seed > MAX_SEED
    ):  # ComfyUI draws seeds up to 2**64; the image differs from ComfyUI's anyway (its own noise)
        folded = seed % (MAX_SEED + 1)
        inputs.set("seed", folded, node_id, seed_name, f"seed {folded} (folded into idforge's 0..{MAX_SEED})")
    else:
        inputs.set("seed", seed, node_id, seed_name)
    inputs.set("num_inference_steps", int(inputs.values["steps"]), node_id, "steps")
    inputs.set("guidance_scale", float(inputs.values["cfg"]), node_id, "cfg")
    if advanced:
        _require(ctx, "add_noise", "enable", "idforge always starts from noise")
        _require(ctx, "start_at_step", 0, "idforge runs the whole schedule")
        end = ctx.number("end_at_step", 10000)
        if end < inputs.values["steps"]:
            raise node_error(
                node_id, "end_at_step", f"{end} stops before the last step: idforge runs the whole schedule"
            )
    else:
        _require(ctx, "denoise", 1.0, "idforge generates from noise (no img2img)")
    return inputs


def _require(ctx: N.NodeContext, name: str, expected: Any, why: str) -> None:
    value = ctx.get(name, optional=True) if ctx.has(name) else expected
    if value != expected:
        raise node_error(ctx.node_id, name, f"{value!r} is not supported ({why}); use {expected!r}")


def _scheduler(inputs: SamplerInputs) -> str:
    sampler, schedule = inputs.values["sampler_name"], inputs.values["scheduler"]
    if sampler not in SAMPLER_NAMES:
        raise node_error(
            inputs.node,
            "sampler_name",
            f"{sampler!r} has no idforge equivalent (use one of {', '.join(SAMPLER_NAMES)})",
        )
    name = SCHEDULER_NAMES.get((sampler, schedule))
    if name is None:
        if schedule != "normal":
            raise node_error(
                inputs.node,
                "scheduler",
                f"{schedule!r} with {sampler} has no idforge equivalent (use 'normal')",
            )
        name = SAMPLER_NAMES[sampler]
    inputs.say(inputs.node, "sampler_name/scheduler", "scheduler", name)
    return name


def _common(inputs: SamplerInputs) -> None:
    positive, negative, latent = inputs.positive, inputs.negative, inputs.latent
    inputs.set("prompt", positive.text, positive.text_nodes[0], "text", "prompt")
    inputs.set("negative_prompt", negative.text or None, negative.text_nodes[0], "text", "negative_prompt")
    inputs.set("width", latent.width, latent.node, "width")
    inputs.set("height", latent.height, latent.node, "height")
    inputs.set("num_images", latent.batch_size, latent.node, "batch_size")


def _not_default(node: str, name: str, value: Any, default: Any, method: str) -> None:
    if value != default:
        raise node_error(
            node, name, f"{value!r}: {method} has no such setting here (only {default!r} is supported)"
        )


def mask_png(mask: N.Mask) -> bytes:
    from PIL import Image

    array = (np.clip(mask.array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def set_references(
    inputs: SamplerInputs,
    gen: PlannedGeneration,
    node: str,
    faces: tuple[N.ImageRef, ...],
    mask: N.Mask | None,
    mask_input: str,
) -> None:
    """One identity node's reference images (face_image + extra_face_images) and its mask (mask_image), noted."""
    gen.images["face_image"] = faces[0]
    gen.images["extra_face_images"] = list(faces[1:])
    target = "face_image" + (" (+ extra_face_images)" if len(faces) > 1 else "")
    inputs.say(node, "image", target, [f.filename for f in faces])
    if mask is not None:
        gen.images["mask_image"] = mask_png(mask)
        inputs.say(node, mask_input, "mask_image", f"mask of node {mask.nodes[-1]}")


def _instantid_models(inputs: SamplerInputs, patch: N.InstantIDPatch, models: dict[str, Any]) -> None:
    models["instantid"] = {
        "ipadapter": (patch.instantid_node, patch.instantid_file),
        "identitynet": (patch.control_net.node, patch.control_net.name),
    }
    inputs.say(
        patch.instantid_node,
        "instantid_file",
        "InstantID ip-adapter (models folder: instantid/)",
        patch.instantid_file,
    )
    inputs.say(
        patch.control_net.node,
        "control_net_name",
        "IdentityNet (models folder: controlnet/)",
        patch.control_net.name,
    )


def _identity_values(inputs: SamplerInputs, patch: N.InstantIDPatch) -> None:
    if patch.class_type == "ApplyInstantID":
        inputs.set("ip_weight", patch.ip_weight, patch.node, "weight", "ip_weight")
        inputs.set("cn_strength", patch.cn_strength, patch.node, "weight", "cn_strength")
        inputs.say(patch.node, "(fixed by the node)", "noise", patch.noise)
    else:
        inputs.set("ip_weight", patch.ip_weight, patch.node, "ip_weight")
        inputs.set("cn_strength", patch.cn_strength, patch.node, "cn_strength")


def instantid_rule(inputs: SamplerInputs, gen: PlannedGeneration) -> bool:
    patches = inputs.patches()
    instantid = [p for p in patches if isinstance(p, N.InstantIDPatch)]
    if not instantid or len(instantid) != len(patches):
        return False
    depth = [c for c in inputs.positive.controls]
    if depth:
        return _insta_depth(inputs, gen, instantid, depth)
    gen.method = "instantid"
    _instantid_models(inputs, instantid[0], gen.models)
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
        _identity_values(inputs, first)
        inputs.set("start_at", first.start_at, first.node, "start_at")
        inputs.set("end_at", first.end_at, first.node, "end_at")
        set_references(inputs, gen, first.node, first.faces, first.mask, "mask")
        return True
    for index, patch in enumerate(instantid):
        if patch.mask is None:
            raise node_error(
                patch.node,
                "mask",
                "several InstantID nodes in one image need a mask each (one person's area)",
            )
        gen.persons.append(
            PlannedPerson(
                faces=list(patch.faces),
                mask_png=mask_png(patch.mask),
                values={
                    "ip_weight": patch.ip_weight,
                    "cn_strength": patch.cn_strength,
                    "start_at": patch.start_at,
                    "end_at": patch.end_at,
                },
                node=patch.node,
            )
        )
        inputs.say(patch.node, "image/mask/weights", f"persons[{index}]", [f.filename for f in patch.faces])
    return True


def _insta_depth(
    inputs: SamplerInputs,
    gen: PlannedGeneration,
    instantid: list[N.InstantIDPatch],
    controls: list[N.ControlApply],
) -> bool:
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
    gen.method = "insta-depth"
    _instantid_models(inputs, patch, gen.models)
    gen.models["depth_controlnet"] = (control.control_net.node, control.control_net.name)
    inputs.say(
        control.control_net.node,
        "control_net_name",
        "depth ControlNet (models folder: controlnet/)",
        control.control_net.name,
    )
    _identity_values(inputs, patch)
    for name, default in (("start_at", 0.0), ("end_at", 1.0), ("noise", 0.0), ("combine_embeds", "average")):
        if not (patch.class_type == "ApplyInstantID" and name == "noise"):
            _not_default(patch.node, name, getattr(patch, name), default, "insta-depth")
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
    _not_default(control.node, "start_percent", control.start_percent, 0.0, "insta-depth")
    _not_default(control.node, "end_percent", control.end_percent, 1.0, "insta-depth")
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
    return True


FACEID_PRESETS = {
    "FACEID": "faceid-{family}",
    "FACEID PLUS - SD1.5 only": "faceid-plus-sd15",
    "FACEID PLUS V2": "faceid-plusv2-{family}",
    "FACEID PORTRAIT (style transfer)": "faceid-portrait-{portrait}",
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": "faceid-portrait-sdxl-unnorm",
}


def adapter_name(file_name: str) -> str:
    """The body's adapter name of a published FaceID file name (ip-adapter-faceid-plusv2_sdxl.bin -> faceid-plusv2-sdxl)."""
    stem = PurePath(file_name).stem.lower()
    return stem.removeprefix("ip-adapter-").replace("_", "-")


FACEID_ADAPTER_NAMES = frozenset(typing.get_args(FACEID_ADAPTERS))


def faceid_rule(inputs: SamplerInputs, gen: PlannedGeneration) -> bool:
    patches = inputs.patches()
    faceid = [p for p in patches if isinstance(p, N.FaceIDPatch)]
    if not faceid:
        return False
    if len(patches) != 1:
        other = patches[1] if patches[0] is faceid[0] else patches[0]
        raise node_error(
            other.node, "model", "idforge runs one FaceID node per image, without other identity nodes"
        )
    patch = faceid[0]
    if inputs.positive.controls:
        control = inputs.positive.controls[0]
        raise node_error(control.node, "control_net", "idforge's FaceID takes no ControlNet")
    gen.method = "faceid"
    values = dict(patch.values)
    for name, value in values.items():
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
        gen.models["faceid_preset"] = (adapter.node, adapter.preset)
        inputs.set("lora_strength", adapter.lora_strength, adapter.node, "lora_strength")
        inputs.say(
            adapter.node, "preset", "adapter (the base model's family decides the file)", adapter.preset
        )
    else:
        gen.models["faceid_adapter"] = (adapter.node, adapter.file)
        inputs.say(adapter.node, "ipadapter_file", "FaceID adapter (models folder: ipadapter/)", adapter.file)
        named = adapter_name(adapter.file or "")
        if (
            named in FACEID_ADAPTER_NAMES
        ):  # the body's name of a published file; the file itself is what loads
            gen.params["adapter"] = named
            gen.sources["adapter"] = f"{adapter.node}.ipadapter_file"
        face_lora = [lora for lora in inputs.model.loras if "faceid" in lora.name.lower()]
        if face_lora:
            lora = face_lora[-1]
            gen.models["faceid_lora"] = (lora.node, lora.name)
            inputs.set(
                "lora_strength",
                lora.strength_model,
                lora.node,
                "strength_model",
                "lora_strength (FaceID LoRA)",
            )
        else:
            inputs.set("lora_strength", 0.0, adapter.node, "(no FaceID LoRA loaded)", "lora_strength")
    set_references(inputs, gen, patch.node, patch.faces, patch.mask, "attn_mask")
    if patch.negative is not None:
        gen.images["negative_image"] = patch.negative
        inputs.say(patch.node, "image_negative", "negative_image", patch.negative.filename)
    return True


MethodRule = Callable[[SamplerInputs, PlannedGeneration], bool]
METHOD_RULES: list[MethodRule] = [instantid_rule, faceid_rule]


def register_method_rule(rule: MethodRule) -> None:
    """A later method's mapping (its patches -> its body), tried before the built-in ones."""
    METHOD_RULES.insert(0, rule)


# -- the plan -----------------------------------------------------------------------------------------------------------


def upstream(workflow: Workflow, start: list[str]) -> set[str]:
    """`start` and every node it depends on."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in workflow.graph:
            continue
        seen.add(node_id)
        todo.extend(str(v[0]) for v in workflow.graph[node_id]["inputs"].values() if is_link(v))
    return seen


def check_supported(workflow: Workflow) -> None:
    unsupported = [
        (node_id, node["class_type"], workflow.title(node_id), N.hint(node["class_type"], node_id))
        for node_id in sorted_ids(workflow.graph)
        if (node := workflow.graph[node_id])["class_type"] not in N.HANDLERS
    ]
    if unsupported:
        raise UnsupportedNodesError(unsupported)


def plan_workflow(workflow: Workflow) -> Plan:
    """The generations of a workflow (see the module doc); ParameterError naming node.input when it cannot be."""
    check_supported(workflow)
    evaluator = _Evaluator(workflow)
    explain: dict[str, list[ExplainLine]] = {}
    by_sampler: dict[str, list[str]] = {}
    outputs = [
        nid for nid in sorted_ids(workflow.graph) if workflow.graph[nid]["class_type"] in N.OUTPUT_CLASSES
    ]
    if not outputs:
        raise ParameterError(
            "workflow", "the workflow has no SaveImage or PreviewImage node: nothing to generate"
        )
    for node_id in outputs:
        ctx = N.NodeContext(evaluator.input_value, node_id, workflow.graph[node_id])
        decoded = ctx.get("images", N.Decoded)
        by_sampler.setdefault(decoded.sampler, []).append(node_id)
        explain.setdefault(node_id, []).append(
            ExplainLine("images", f"the images of KSampler {decoded.sampler}", decoded.decoder)
        )
    generations = []
    for sampler, saved in by_sampler.items():
        inputs = _sampler_inputs(evaluator, sampler, explain)
        gen = PlannedGeneration(
            sampler=sampler, method="", params={}, images={}, sources={}, outputs=saved, nodes=[]
        )
        _common(inputs)
        gen.scheduler = _scheduler(inputs)
        gen.models["base"] = (inputs.model.checkpoint_node, inputs.model.checkpoint)
        for rule in METHOD_RULES:
            if rule(inputs, gen):
                break
        else:
            raise node_error(
                sampler,
                "model",
                "no InstantID, FaceID or PuLID node reaches this KSampler: idforge runs identity methods only",
            )
        face_lora = gen.models.get("faceid_lora", (None,))[0]
        gen.loras = [lora for lora in inputs.model.loras if lora.node != face_lora]
        for lora in gen.loras:
            if lora.strength_clip != lora.strength_model:
                inputs.say(
                    lora.node,
                    "strength_clip",
                    "not applied separately (idforge merges a LoRA with one strength)",
                    lora.strength_clip,
                )
        gen.params = {**inputs.params, **gen.params}
        gen.sources = {**inputs.sources, **gen.sources}
        gen.nodes = sorted_ids(upstream(workflow, [*saved]))
        generations.append(gen)
    evaluator.record(explain)
    return Plan(workflow, generations, explain)
