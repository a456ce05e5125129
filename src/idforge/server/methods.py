"""From validated request bodies to jobs, and from jobs to the engine: the only place that knows both sides.

`build_spec` runs on the HTTP side (in a thread: it may fetch URLs and decodes every image once, so bad images
fail with 400 before anything is queued or charged). `EngineGenerator` runs on the worker thread: it owns the
`Engine` (created there, so models load once, in the thread that uses them) and calls the method's `generate_*`
function. `warm_up` runs one tiny generation per method on a synthetic face before the server reports ready, so
every model (and the first-call set-up of torch and onnxruntime) is paid before the first request, not by it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from PIL import Image

from idforge.errors import (
    IdforgeError,
    ModelFormatError,
    ModelNotFoundError,
    ParameterError,
    check_window,
)
from idforge.methods.registry import (
    GENERATION_FIELDS,
    Method,
    MethodCall,
    generation_from_params,
    get_method,
    method_names,
)
from idforge.server.images import ImagePolicy, image_bytes
from idforge.server.jobs import JobError, JobOutput, JobSpec, ProgressCallback, WarmUpReport
from idforge.styles import get_style

if TYPE_CHECKING:
    from idforge.engine.session import Engine

log = logging.getLogger("idforge.server.methods")


def warm_up_methods() -> tuple[str, ...]:
    """Every registered method (the default of `idforge serve --warm-up`)."""
    return method_names()


def image_fields(method: Method) -> set[str]:
    return {image.field for image in method.images} | {image.extra for image in method.images if image.extra}


def output_count(method: str, body: Any) -> int:
    """How many images a request generates (the price is per image): best-of-N generates N per delivered one."""
    return get_method(method).output_count(body)


def billed_steps(body: Any) -> int:
    """Steps per image for pricing: the preset's when the body names one and gives no num_inference_steps."""
    if getattr(body, "preset", None) and "num_inference_steps" not in body.model_fields_set:
        from idforge.engine.fewstep import get_few_step_preset

        return get_few_step_preset(body.preset).steps
    return body.num_inference_steps


def check_identity_options(body: Any) -> None:
    """best_of / preset rules every method shares that the schema cannot express, checked before anything is
    queued or charged (a method's own rules are its `Method.check`, run at the end of `build_spec`)."""
    if body.preset is not None:
        from idforge.engine.fewstep import get_few_step_preset

        get_few_step_preset(body.preset)  # unknown: 400 naming preset, listing the known ones
    if body.best_of > 1 and getattr(body, "num_images", 1) != 1:
        raise ParameterError("best_of", f"best-of-{body.best_of} returns one image; num_images must be 1")


def build_spec(method: str, body: Any, policy: ImagePolicy) -> JobSpec:
    """Check cross-field rules and decode every image field; raises ParameterError / InputImageError."""
    if (body.width is None) != (body.height is None):
        raise ParameterError(
            "width" if body.width is None else "height", "give both width and height, or neither"
        )
    if body.style is not None:
        get_style(body.style)  # an unknown name is a 400 that lists the known ones
    check_identity_options(body)
    start, end = getattr(body, "start_at", None), getattr(body, "end_at", None)
    if start is not None and end is not None:
        check_window(start, end)  # the params check it too, but only when the worker builds the request
    if not body.base64 and output_count(method, body) > 1:
        raise ParameterError("base64", "several images need base64 true (a JPEG body holds one image)")
    registered = get_method(method)
    images: dict[str, bytes | list[bytes] | None] = {}
    params: dict[str, Any] = {}
    given = body.model_fields_set
    fields = image_fields(registered)
    for name, value in body.model_dump().items():
        if name == "webhook_url" or name in type(body).ALIASES:
            continue  # about the job, or already mapped onto our names
        if (
            body.preset is not None
            and name in ("num_inference_steps", "guidance_scale")
            and name not in given
        ):
            params[name] = None  # the preset's (GenerationParams fills it)
            continue
        if name == "persons":
            params["persons"] = _person_fields(value, images, policy)
        elif name not in fields:
            params[name] = value
        elif isinstance(value, list):
            images[name] = [image_bytes(v, f"{name}[{i}]", policy) for i, v in enumerate(value)]
        elif value is not None:
            images[name] = image_bytes(value, name, policy)
        else:
            images[name] = None
    spec = JobSpec(method=method, params=params, images=images)
    if registered.check is not None:
        registered.check(method_call(spec))
    return spec


PERSON_IMAGE_FIELDS = ("face_image", "extra_face_images", "mask_image")


def _person_fields(
    persons: list[dict[str, Any]], images: dict[str, bytes | list[bytes] | None], policy: ImagePolicy
) -> list[dict[str, Any]]:
    """Decode each person's images into `images` under `persons[i].<field>`; return the other fields."""
    params = []
    for index, person in enumerate(persons):
        prefix = f"persons[{index}]"
        for name in PERSON_IMAGE_FIELDS:
            value = person.pop(name)
            if isinstance(value, list):
                images[f"{prefix}.{name}"] = [
                    image_bytes(v, f"{prefix}.{name}[{i}]", policy) for i, v in enumerate(value)
                ]
            elif value is not None:
                images[f"{prefix}.{name}"] = image_bytes(value, f"{prefix}.{name}", policy)
        params.append(person)
    return params


def persons_from_spec(spec: JobSpec) -> list[Any]:
    """The engine's Person objects from a job's `persons` parameters and images."""
    from idforge.methods.persons import Person

    persons = []
    for index, fields in enumerate(spec.params.get("persons") or []):
        prefix = f"persons[{index}]"
        faces = [spec.images[f"{prefix}.face_image"], *(spec.images.get(f"{prefix}.extra_face_images") or [])]
        box = fields.get("box")
        persons.append(
            Person(
                faces=faces,
                region=fields.get("region"),
                box=tuple(box) if box is not None else None,
                mask=cast("bytes | None", spec.images.get(f"{prefix}.mask_image")),
                ip_weight=fields.get("ip_weight"),
                cn_strength=fields.get("cn_strength"),
                start_at=fields.get("start_at"),
                end_at=fields.get("end_at"),
            )
        )
    return persons


def method_call(spec: JobSpec) -> MethodCall:
    """The registry's MethodCall of a decoded job (the same the CLI builds from its flags)."""
    params = spec.params
    return MethodCall(
        params=params,
        images=spec.images,
        generation=generation_from_params(params),
        persons=persons_from_spec(spec),
    )


def warm_up_spec(method: str) -> JobSpec:
    """A tiny job for `method` on a synthetic face (not the one the tests and demos send, so no cache is primed
    for them), with every other parameter at the API's defaults."""
    from idforge.demo.samples import square_face_png

    face = base64.b64encode(square_face_png(size=160, box=(40, 36, 120, 116))).decode("ascii")
    registered = get_method(method)
    fields: dict[str, Any] = {"prompt": "warm-up", "width": 64, "height": 64, "seed": 0}
    fields |= {name: face for name in registered.warm_up_images}
    body = registered.body(**fields)
    spec = build_spec(method, body, ImagePolicy(allow_urls=False))
    spec.params["num_inference_steps"] = 2  # below the API's minimum: only the warm-up may do this
    return spec


def make_generator(config: Any) -> EngineGenerator:
    """The real generator for a ServerConfig (models, device, dtype, fast path)."""
    from idforge.engine.session import ModelChoice

    models = ModelChoice(base=config.base, face_models=config.face_models, models_dirs=config.models_dirs)
    return EngineGenerator(
        models, device=config.device, dtype=config.dtype, fast=getattr(config, "fast", None)
    )


def _job_error(exc: Exception, method: str) -> Exception:
    """Bad input found while generating (no face, out-of-range combination) is a 400 naming the field; a set-up
    problem of the server (missing or wrong models) and anything else stays as it is (500, logged)."""
    if isinstance(exc, ModelFormatError | ModelNotFoundError) or not isinstance(exc, IdforgeError):
        return exc
    return JobError(400, str(exc), get_method(method).error_field(exc))


def _job_output(spec: JobSpec, result: Any, extras: dict[str, Image.Image]) -> JobOutput:
    return JobOutput(
        images=list(result.images),
        seeds=list(result.seeds),
        extras=extras,
        warnings=list(result.warnings),
        timings={"engine_s": float(result.recipe.get("timings", {}).get("total_s", 0.0))},
        recipe=dict(result.recipe) | {"style": spec.params.get("style")},
    )


class EngineGenerator:
    """The real generator: one Engine, created and used only on the worker thread."""

    def __init__(
        self, models: Any = None, *, device: str = "auto", dtype: str = "auto", fast: Any = None
    ) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        self.fast = fast  # FastPath: models are prepared (and compiled) once, reused by every job
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from idforge.engine.session import Engine

            self._engine = Engine(self.models, device=self.device, dtype=self.dtype, fast=self.fast)
        return self._engine

    def warm_up(self, report: WarmUpReport, methods: Sequence[str] | None = None) -> dict[str, str]:
        """Load each method's default models (default: every registered method) with a 64x64, 2-step generation;
        returns the methods that cannot run here, with the reason (their requests fail with 500 until the models
        are set up)."""
        unavailable: dict[str, str] = {}
        for method in warm_up_methods() if methods is None else methods:
            report(f"{method} models")
            started = time.perf_counter()
            try:
                self.generate(warm_up_spec(method), lambda step, total: None)
            except (ModelFormatError, ModelNotFoundError) as exc:
                unavailable[method] = str(exc)
                log.warning(
                    "warm-up: method unavailable", extra={"fields": {"method": method, "error": str(exc)}}
                )
                continue
            except (JobError, IdforgeError) as exc:  # e.g. real face models see no face in the synthetic one:
                log.info(  # the models are loaded by then (every method loads before it analyses faces)
                    "warm-up generation stopped early",
                    extra={"fields": {"method": method, "error": getattr(exc, "message", str(exc))}},
                )
            log.info(
                "warm-up: loaded",
                extra={"fields": {"method": method, "seconds": round(time.perf_counter() - started, 3)}},
            )
        return unavailable

    def generate(self, spec: JobSpec, progress: ProgressCallback) -> JobOutput:
        from idforge.server.workflows import WORKFLOW_METHOD, generate_workflow

        if spec.method == WORKFLOW_METHOD:
            return generate_workflow(self.engine, spec, progress)
        try:
            method = get_method(spec.method)
        except ParameterError:
            raise JobError(400, f"unknown method {spec.method!r}") from None
        try:
            call = method_call(spec)
            result = method.run(self.engine, method.build_request(call), progress)
            extras = method.extras(call, result) if method.extras else {}
        except Exception as exc:
            error = _job_error(exc, spec.method)
            if error is exc:
                raise  # a set-up problem of the server or a bug: 500, logged by the worker
            raise error from exc
        return _job_output(spec, result, extras)

    def generate_batch(
        self, specs: Sequence[JobSpec], progress: ProgressCallback
    ) -> list[JobOutput | BaseException]:
        """Several jobs that share a denoising pass (server/batching.py gave them one key): one output or one
        exception per job, in order. A job whose own inputs fail gets its error; the others still run."""
        names = {spec.method for spec in specs}
        method = get_method(next(iter(names))) if len(names) == 1 else None
        if method is None or method.run_batch is None:
            raise JobError(500, f"no batched path for {sorted(names)}")
        outcomes: list[JobOutput | BaseException | None] = [None] * len(specs)
        requests, slots = [], []
        for index, spec in enumerate(specs):
            try:
                requests.append(method.build_request(method_call(spec)))
                slots.append(index)
            except Exception as exc:  # noqa: BLE001 - a bad parameter of this job fails this job alone
                outcomes[index] = exc
        results = method.run_batch(self.engine, requests, progress) if requests else []
        for index, result in zip(slots, results, strict=True):
            if isinstance(result, Exception):
                outcomes[index] = _job_error(result, method.name)
            else:
                outcomes[index] = _job_output(specs[index], result, {})
        return outcomes  # type: ignore[return-value]


def error_field(exc: Exception) -> str | None:
    """The request field an error raised before queuing names: the one it carries, else its parameter name
    in the body's vocabulary (GenerationParams' `steps` is `num_inference_steps`)."""
    typed = getattr(exc, "field", None)
    if typed:
        return typed
    name = getattr(exc, "name", None)
    return None if not name else GENERATION_FIELDS.get(str(name), str(name))
