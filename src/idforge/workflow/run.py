"""Opening a workflow with the registry's catalog and running it through the method registry: the same path as
the HTTP server and the generic CLI.

`open_workflow` reads the file with every registered method's widget orders, applies `--set`, drops muted and
passes bypassed nodes, and plans it with every registered method's nodes and rules. `prepare` does everything that can fail cheaply, before any model loads: each planned generation's body is
validated as an HTTP body is (errors name the node and input, e.g. "9.ip_weight"), its images are looked up by
LoadImage node id, every model file the graph names goes through the ComfyUI folder resolver (models/store.py) into
the request field the method's rule gave it, the method's own cross-field check runs and its request is built (`get_method(name).build_request(MethodCall)`).
`execute` then calls `method.run(engine, request, progress)` for each and adds the recipe's `workflow` section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from idforge.comfy import formats
from idforge.comfy.formats import Workflow, apply_overrides, resolve_modes
from idforge.comfy.generation import PlannedGeneration, PlannedModel
from idforge.comfy.plan import Plan, plan_workflow
from idforge.comfy.values import ImageRef
from idforge.errors import ParameterError
from idforge.methods.registry import Method, MethodCall, call_params, generation_from_params, get_method
from idforge.workflow.registry import catalog

ProgressCallback = Callable[[int, int], None]
PLACEHOLDER = "workflow-image"  # stands for an image while the body is validated (images are checked apart)


def load_workflow(source: str | Path | bytes | Mapping[str, Any], name: str | None = None) -> Workflow:
    """A workflow file as one API-format graph, its UI-format widgets read with every registered method's."""
    return formats.load_workflow(source, name, catalog().nodes.widgets)


def open_workflow(
    source: str | Path | bytes | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Plan:
    """Load, apply `--set` overrides, drop muted / pass bypassed nodes, plan. A malformed file is one
    ParameterError naming `workflow`, never a traceback."""
    from idforge.errors import IdforgeError

    try:
        known = catalog()
        workflow = formats.load_workflow(source, name, known.nodes.widgets)
        apply_overrides(workflow, overrides or {})
        resolve_modes(workflow)
        return plan_workflow(workflow, known)
    except IdforgeError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise ParameterError(
            "workflow", f"malformed workflow ({type(exc).__name__}: {exc})", field="workflow"
        ) from None


@dataclass
class Prepared:
    """One generation ready to run: its plan, method, call and engine request."""

    generation: PlannedGeneration
    method: Method
    call: MethodCall
    request: Any
    models: dict[str, str]  # role -> the resolved path, for the recipe and --explain
    body: Any = None  # the validated body (pricing reads it)


def validate_body(method: Method, gen: PlannedGeneration) -> Any:
    """The method's body from the planned parameters, validated as an HTTP body (placeholders for images)."""
    fields = {}
    for name, value in gen.params.items():
        if name in method.body.model_fields:
            fields[name] = value
        elif not (name == "num_images" and value == 1):  # a method with one image per call
            where = gen.sources.get(name, f"{gen.sampler}.{name}")
            raise ParameterError(where, f"{value!r}: idforge {method.name} has no {name}", field=where)
    for name, value in gen.images.items():
        if isinstance(value, list):
            fields[name] = [PLACEHOLDER] * len(value)
        elif value is not None:
            fields[name] = PLACEHOLDER
    if gen.persons:
        fields["persons"] = [
            {
                "face_image": PLACEHOLDER,
                "extra_face_images": [PLACEHOLDER] * (len(p.faces) - 1),
                "mask_image": PLACEHOLDER,
            }
            | p.values
            for p in gen.persons
        ]
    try:
        return method.body(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error.get("loc", ())]
        where = gen.sources.get(loc[0], "") if loc else ""
        if loc and loc[0] == "persons" and len(loc) > 2 and loc[1].isdigit():
            where = f"{gen.persons[int(loc[1])].node}.{loc[2]}"
        where = where or f"{gen.sampler}.{loc[0] if loc else 'inputs'}"
        value = error.get("input")
        raise ParameterError(
            where,
            f"{value!r}: {error.get('msg', 'invalid')} (idforge {method.name} {'.'.join(loc)}); "
            f'change it with --set {where}=VALUE (HTTP: "set")',
            field=where,
        ) from None


def _image(images: Mapping[str, Any], ref: ImageRef) -> Any:
    if ref.node not in images or images[ref.node] is None:
        raise ParameterError(
            f"{ref.node}.image",
            f"no image given for LoadImage node {ref.node} ({ref.filename})",
            field=f"{ref.node}.image",
        )
    return images[ref.node]


def _resolve(store: Any, model: PlannedModel) -> str:
    from idforge.errors import ModelNotFoundError

    try:
        return str(store.resolve(model.role, model.name, local_only=True).path)
    except ModelNotFoundError as exc:
        where = f"{model.node}.{model.input}"
        raise ParameterError(where, str(exc), field=where) from None


def resolve_models(gen: PlannedGeneration, store: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(request field -> path, recipe name -> path) of the files the graph names, through the ComfyUI folders;
    a field "a.b" is key b of the request's field a."""
    request: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, model in gen.models.items():
        paths[key] = path = _resolve(store, model)
        if model.field is None:
            continue
        head, _, part = model.field.partition(".")
        if part:
            request.setdefault(head, {})[part] = path
        else:
            request[head] = path
    return request, paths


def prepare(
    plan: Plan, images: Mapping[str, Any], store: Any, *, generation_extra: Mapping[str, Any] | None = None
) -> list[Prepared]:
    """Every generation of `plan`, validated and built (see the module doc); nothing is loaded."""
    from idforge.engine.params import LoraSpec
    from idforge.methods.persons import Person

    prepared = []
    for gen in plan.generations:
        method = get_method(gen.method)
        overrides, paths = resolve_models(gen, store)
        if gen.on_models is not None:
            gen.on_models(gen, paths)
        body = validate_body(method, gen)
        params = call_params(body)
        params["persons"] = [p.values for p in gen.persons]
        call_images: dict[str, Any] = {}
        for field_name, value in gen.images.items():
            if isinstance(value, list):
                call_images[field_name] = [_image(images, ref) for ref in value]
            elif isinstance(value, ImageRef):
                call_images[field_name] = _image(images, value)
            else:
                call_images[field_name] = value  # a computed mask (PNG bytes)
        persons = [
            Person(faces=[_image(images, ref) for ref in p.faces], mask=p.mask_png, **p.values)
            for p in gen.persons
        ]
        loras = [
            LoraSpec(
                path=_resolve(store, PlannedModel(lora.node, "lora_name", lora.name, "lora", None)),
                strength=lora.strength_model,
            )
            for lora in gen.loras
        ]
        for index, lora in enumerate(loras):
            paths[f"lora{index}"] = lora.path
        try:
            generation = generation_from_params(
                params, scheduler=gen.scheduler, loras=loras, **dict(generation_extra or {})
            )
            call = MethodCall(params=params, images=call_images, generation=generation, persons=persons)
            if method.check is not None:
                method.check(call)
            request = method.build_request(call)
        except ParameterError as exc:
            raise _named(exc, gen) from None
        known = {f.name for f in dataclasses.fields(request)}
        request = dataclasses.replace(request, **{k: v for k, v in overrides.items() if k in known})
        prepared.append(Prepared(gen, method, call, request, paths, body))
    return prepared


def _named(exc: ParameterError, gen: PlannedGeneration) -> ParameterError:
    """A method's error in the workflow's terms: the node.input its parameter came from."""
    from idforge.methods.registry import GENERATION_FIELDS

    name = str(getattr(exc, "field", None) or exc.name)
    name = GENERATION_FIELDS.get(name, name)
    where = gen.sources.get(name) or f"{gen.sampler}.{name}"
    return ParameterError(where, exc.problem, field=where)


def workflow_section(plan: Plan, gen: PlannedGeneration, paths: Mapping[str, str]) -> dict[str, Any]:
    """The recipe's `workflow` section: which file, which nodes made this image, the files they named."""
    return {
        "file": plan.workflow.name,
        "format": plan.workflow.format,
        "sampler": gen.sampler,
        "outputs": list(gen.outputs),
        "nodes": list(gen.nodes),
        "method": gen.method,
        "models": dict(paths),
    }


def execute(engine: Any, plan: Plan, prepared: Sequence[Prepared], progress: ProgressCallback) -> list[Any]:
    """Run every prepared generation; each result's recipe gains the `workflow` section."""
    results = []
    for item in prepared:
        result = item.method.run(engine, item.request, progress)
        result.recipe["workflow"] = workflow_section(plan, item.generation, item.models)
        results.append(result)
    return results
