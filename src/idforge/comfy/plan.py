"""From a workflow graph to planned generations: one per KSampler that reaches a SaveImage or PreviewImage.

The planner evaluates the node handlers of a `Catalog` backwards from the output nodes, reads what reaches each
sampler (prompts, latent, sampler settings, base model, LoRAs) and hands the identity nodes to the one rule that
takes them (catalog.py), which fills in the method's body parameters, images, people and model files. The body is
validated later, as an HTTP body is (workflow/run.py). A value the method cannot express is refused naming the node
and input, never silently dropped; unsupported classes are all refused at once, before anything is evaluated.
Every value used is recorded per node for `--explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idforge.comfy.catalog import Catalog
from idforge.comfy.few_step import few_step_lora, use_preset
from idforge.comfy.formats import Workflow, is_link, sorted_ids
from idforge.comfy.generation import (
    ExplainLine,
    PlannedGeneration,
    PlannedModel,
    SamplerInputs,
    node_error,
)
from idforge.comfy.nodes import NodeContext, NodeTable
from idforge.comfy.values import Conditioning, Decoded, Latent, Model, NotSupported
from idforge.engine.params import MAX_SEED
from idforge.errors import ParameterError


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
    def __init__(self, workflow: Workflow, nodes: NodeTable) -> None:
        self.workflow = workflow
        self.nodes = nodes
        self.outputs: dict[str, tuple[Any, ...]] = {}
        self.contexts: dict[str, NodeContext] = {}
        self.running: set[str] = set()

    def node_outputs(self, node_id: str) -> tuple[Any, ...]:
        if node_id in self.outputs:
            return self.outputs[node_id]
        if node_id in self.running:
            raise ParameterError(
                "workflow", f"node {node_id} feeds itself (a cycle)", field=f"{node_id}.class_type"
            )
        node = self.workflow.graph[node_id]
        ctx = NodeContext(self.input_value, node_id, node)
        self.contexts[node_id] = ctx
        self.running.add(node_id)
        try:
            result = self.nodes.handlers[node["class_type"]](ctx)
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
        if isinstance(produced, NotSupported):
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


def _sampler_inputs(
    evaluator: _Evaluator, node_id: str, explain: dict[str, list[ExplainLine]]
) -> SamplerInputs:
    ctx = NodeContext(evaluator.input_value, node_id, evaluator.workflow.graph[node_id])
    inputs = SamplerInputs(
        node=node_id,
        model=ctx.get("model", Model),
        positive=ctx.get("positive", Conditioning),
        negative=ctx.get("negative", Conditioning),
        latent=ctx.get("latent_image", Latent),
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


def _require(ctx: NodeContext, name: str, expected: Any, why: str) -> None:
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


def check_supported(workflow: Workflow, nodes: NodeTable) -> None:
    unsupported = [
        (node_id, node["class_type"], workflow.title(node_id), nodes.hint(node["class_type"], node_id))
        for node_id in sorted_ids(workflow.graph)
        if (node := workflow.graph[node_id])["class_type"] not in nodes.handlers
    ]
    if unsupported:
        raise UnsupportedNodesError(unsupported)


def plan_workflow(workflow: Workflow, catalog: Catalog) -> Plan:
    """The generations of a workflow (see the module doc); ParameterError naming node.input when it cannot be."""
    check_supported(workflow, catalog.nodes)
    evaluator = _Evaluator(workflow, catalog.nodes)
    explain: dict[str, list[ExplainLine]] = {}
    by_sampler: dict[str, list[str]] = {}
    outputs = [
        nid
        for nid in sorted_ids(workflow.graph)
        if workflow.graph[nid]["class_type"] in catalog.nodes.outputs
    ]
    if not outputs:
        raise ParameterError(
            "workflow", "the workflow has no SaveImage or PreviewImage node: nothing to generate"
        )
    for node_id in outputs:
        ctx = NodeContext(evaluator.input_value, node_id, workflow.graph[node_id])
        decoded = ctx.get("images", Decoded)
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
        model = inputs.model
        gen.loras = list(model.loras)
        few_step = few_step_lora(model.loras)
        if (
            few_step is not None
        ):  # the preset loads its LoRA and runs its card's scheduler, steps and guidance
            preset, lora = few_step
            gen.loras.remove(lora)
            gen.scheduler = None if use_preset(inputs, preset, lora) else _scheduler(inputs)
        else:
            gen.scheduler = _scheduler(inputs)
        gen.models["base"] = PlannedModel(
            model.checkpoint_node, "ckpt_name", model.checkpoint, "base", "base"
        )
        gen.method, rule, patches = catalog.rule_for(inputs)
        rule.apply(inputs, gen, patches)
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
