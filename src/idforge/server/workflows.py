"""ComfyUI workflows as jobs: the HTTP side plans the workflow, decodes the images keyed by LoadImage node id and
prices the job (the sum of its generations' prices: steps as resolved, a preset's included) before anything is queued; the worker plans the stored graph
again and runs it through the method registry (workflow/run.py), one JobOutput for all its generations, with the
images of each output node (SaveImage / PreviewImage id) listed in the recipe's `workflow.outputs`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from idforge.comfy.values import ImageRef
from idforge.errors import IdforgeError, ModelFormatError, ModelNotFoundError, ParameterError
from idforge.server.images import ImagePolicy, image_bytes
from idforge.server.jobs import JobError, JobOutput, JobSpec, ProgressCallback

WORKFLOW_METHOD = "workflow"  # the job's method: not a registered method, a graph of them


def decode_images(plan: Any, given: Mapping[str, str], policy: ImagePolicy) -> dict[str, bytes]:
    """The bytes of every LoadImage node the plan uses; an image for no such node is refused."""
    needed = plan.image_nodes()
    unknown = sorted(set(given) - set(needed))
    if unknown:
        raise ParameterError(
            f"images.{unknown[0]}",
            f"node {unknown[0]} is not a LoadImage node this workflow uses (those are: {', '.join(needed) or 'none'})",
            field=f"images.{unknown[0]}",
        )
    images = {}
    for node, filename in needed.items():
        if node not in given:
            raise ParameterError(
                f"images.{node}",
                f"LoadImage node {node} ({filename}) needs its image: images.{node} (base64 or URL)",
                field=f"images.{node}",
            )
        images[node] = image_bytes(given[node], f"images.{node}", policy)
    return images


def price_workflow(plan: Any, images: Mapping[str, Any], config: Any) -> tuple[list[Any], list[int]]:
    """(the prepared generations, each one's price): one path for /v2/workflow and its free plan, so both
    agree; the job costs the sum."""
    from idforge.models.store import ModelStore
    from idforge.workflow.run import prepare

    store = ModelStore(list(config.models_dirs), offline=True)
    prepared = prepare(plan, images, store)
    prices = [
        config.pricing.price(
            item.method.name, item.call.generation.steps, item.method.output_count(item.body)
        )
        for item in prepared
    ]
    return prepared, prices


def build_workflow_spec(body: Any, config: Any) -> tuple[JobSpec, int]:
    """(the job, its price) of a POST /v2/workflow body; ParameterError / InputImageError name the field."""
    from idforge.workflow.run import open_workflow

    plan = open_workflow(body.workflow, body.set, body.name)
    images = decode_images(plan, body.images, config.images)
    _, prices = price_workflow(plan, images, config)
    params = {
        "workflow": plan.workflow.graph,
        "name": plan.workflow.name,
        "format": plan.workflow.format,
    }
    return JobSpec(method=WORKFLOW_METHOD, params=params, images=dict(images)), sum(prices)


def image_feeds(gen: Any) -> dict[str, list[str]]:
    """LoadImage node id -> the body fields its image fills in one generation ("persons[0].face_image" too)."""
    feeds: dict[str, list[str]] = {}
    for field_name, value in gen.images.items():
        for index, ref in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(ref, ImageRef):
                name = f"{field_name}[{index}]" if isinstance(value, list) else field_name
                feeds.setdefault(ref.node, []).append(name)
    for number, person in enumerate(gen.persons):
        for index, ref in enumerate(person.faces):
            name = "face_image" if index == 0 else f"extra_face_images[{index - 1}]"
            feeds.setdefault(ref.node, []).append(f"persons[{number}].{name}")
    return feeds


def plan_workflow_body(body: Any, config: Any) -> dict[str, Any]:
    """What a POST /v2/workflow body would run and cost, without its images and without loading a model: the
    studio shows it before anything is spent. Errors are the ones /v2/workflow gives (node.input named)."""
    from idforge.workflow.run import PLACEHOLDER, open_workflow

    plan = open_workflow(body.workflow, body.set, body.name)
    needed = plan.image_nodes()
    prepared, prices = price_workflow(plan, dict.fromkeys(needed, PLACEHOLDER), config)
    images: dict[str, dict[str, Any]] = {}
    generations = []
    for item, price in zip(prepared, prices, strict=True):
        gen = item.generation
        for node, fields in image_feeds(gen).items():
            entry = images.setdefault(
                node,
                {"node": node, "title": plan.workflow.title(node), "filename": needed[node], "feeds": []},
            )
            entry["feeds"].extend(f"{gen.method}.{name}" for name in fields)
        generations.append(
            {
                "sampler": gen.sampler,
                "method": gen.method,
                "params": dict(gen.params),
                "sources": dict(gen.sources),
                "outputs": list(gen.outputs),
                "price": price,
            }
        )
    outputs = [node for gen in plan.generations for node in gen.outputs]
    return {
        "name": plan.workflow.name,
        "format": plan.workflow.format,
        "generations": generations,
        "images": list(images.values()),
        "outputs": [{"node": node, "title": plan.workflow.title(node)} for node in outputs],
        "price": sum(prices),
        "explain": plan.explain_text(),
    }


def generate_workflow(engine: Any, spec: JobSpec, progress: ProgressCallback) -> JobOutput:
    """Run a workflow job on the worker's engine (see the module doc)."""
    from idforge.workflow.run import execute, open_workflow, prepare

    try:
        plan = open_workflow(spec.params["workflow"], {}, spec.params.get("name"))
        plan.workflow.format = spec.params.get("format", plan.workflow.format)
        prepared = prepare(plan, spec.images, engine.store)
        results = execute(engine, plan, prepared, progress)
    except (ModelFormatError, ModelNotFoundError):
        raise  # a set-up problem of the server: 500, logged
    except IdforgeError as exc:
        raise JobError(400, str(exc), getattr(exc, "field", None)) from exc
    images: list[Image.Image] = []
    seeds: list[int] = []
    warnings: list[str] = []
    recipes: list[dict[str, Any]] = []
    outputs: dict[str, list[int]] = {}
    for item, result in zip(prepared, results, strict=True):
        first = len(images)
        images.extend(result.images)
        seeds.extend(result.seeds)
        warnings.extend(result.warnings)
        recipes.append(dict(result.recipe))
        for node in item.generation.outputs:
            outputs[node] = list(range(first, len(images)))
    recipe = {
        "method": WORKFLOW_METHOD,
        "workflow": {
            "file": plan.workflow.name,
            "format": plan.workflow.format,
            "outputs": outputs,
            "generations": [
                {
                    "sampler": item.generation.sampler,
                    "method": item.method.name,
                    "outputs": item.generation.outputs,
                }
                for item in prepared
            ],
        },
        "generations": recipes,
    }
    total = sum(float(r.get("timings", {}).get("total_s", 0.0)) for r in recipes)
    return JobOutput(
        images=images, seeds=seeds, warnings=warnings, timings={"engine_s": total}, recipe=recipe
    )
