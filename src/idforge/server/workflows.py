"""ComfyUI workflows as jobs: the HTTP side plans the workflow, decodes the images keyed by LoadImage node id and
prices the job (the sum of its generations' prices: steps as resolved, a preset's included) before anything is queued; the worker plans the stored graph
again and runs it through the method registry (workflow/run.py), one JobOutput for all its generations, with the
images of each output node (SaveImage / PreviewImage id) listed in the recipe's `workflow.outputs`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

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


def build_workflow_spec(body: Any, config: Any) -> tuple[JobSpec, int]:
    """(the job, its price) of a POST /v2/workflow body; ParameterError / InputImageError name the field."""
    from idforge.models.store import ModelStore
    from idforge.workflow.run import open_workflow, prepare

    plan = open_workflow(body.workflow, body.set, body.name)
    images = decode_images(plan, body.images, config.images)
    store = ModelStore(list(config.models_dirs), offline=True)
    prepared = prepare(plan, images, store)
    cost = sum(
        config.pricing.price(
            item.method.name, item.call.generation.steps, item.method.output_count(item.body)
        )
        for item in prepared
    )
    params = {
        "workflow": plan.workflow.graph,
        "name": plan.workflow.name,
        "format": plan.workflow.format,
    }
    return JobSpec(method=WORKFLOW_METHOD, params=params, images=dict(images)), cost


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
