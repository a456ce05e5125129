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
import re
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from idforge.engine.params import GenerationParams
from idforge.errors import IdforgeError, ModelFormatError, ModelNotFoundError, ParameterError
from idforge.methods.instantid.params import InstantIDParams
from idforge.server.images import ImagePolicy, image_bytes
from idforge.server.jobs import JobError, JobOutput, JobSpec, ProgressCallback, WarmUpReport
from idforge.server.segmind_names import SEGMIND_TO_OURS
from idforge.styles import get_style

log = logging.getLogger("idforge.server.methods")
WARM_UP_METHODS = ("insta-depth", "instantid", "faceid")

IMAGE_FIELDS = ("face_image", "pose_image", "kps_image", "mask_image", "negative_image", "extra_face_images")
NOT_PARAMS = ("webhook_url", *SEGMIND_TO_OURS)  # about the job, or already mapped onto our names


def output_count(method: str, body: Any) -> int:
    """How many images a request generates (the price is per image): best-of-N generates N per delivered one."""
    if method == "faceid":
        refs = 1 + len(body.extra_face_images)
        delivered = max(body.num_images, refs) if body.batch else body.num_images  # as FaceID's batch rule
    else:
        delivered = getattr(body, "num_images", 1)
    return delivered * getattr(body, "best_of", 1)


def billed_steps(body: Any) -> int:
    """Steps per image for pricing: the preset's when the body names one and gives no num_inference_steps."""
    if getattr(body, "preset", None) and "num_inference_steps" not in body.model_fields_set:
        from idforge.engine.fewstep import get_few_step_preset

        return get_few_step_preset(body.preset).steps
    return body.num_inference_steps


def check_identity_options(method: str, body: Any) -> None:
    """best_of / preset rules the schema cannot express, checked before anything is queued or charged."""
    if body.preset is not None:
        from idforge.engine.fewstep import get_few_step_preset

        get_few_step_preset(body.preset)  # unknown: 400 naming preset, listing the known ones
    if body.best_of > 1:
        if getattr(body, "num_images", 1) != 1:
            raise ParameterError("best_of", f"best-of-{body.best_of} returns one image; num_images must be 1")
        if method == "faceid" and body.batch:
            raise ParameterError(
                "best_of", "best-of-N cannot be combined with batch mode (one output per face)"
            )


def build_spec(method: str, body: Any, policy: ImagePolicy) -> JobSpec:
    """Check cross-field rules and decode every image field; raises ParameterError / InputImageError."""
    if (body.width is None) != (body.height is None):
        raise ParameterError(
            "width" if body.width is None else "height", "give both width and height, or neither"
        )
    if body.style is not None:
        get_style(body.style)  # an unknown name is a 400 that lists the known ones
    check_identity_options(method, body)
    start, end = getattr(body, "start_at", None), getattr(body, "end_at", None)
    if start is not None and end is not None and end < start:
        raise ParameterError("end_at", f"{end} is before start_at {start}")
    if not body.base64 and output_count(method, body) > 1:
        raise ParameterError("base64", "several images need base64 true (a JPEG body holds one image)")
    images: dict[str, bytes | list[bytes] | None] = {}
    params: dict[str, Any] = {}
    given = body.model_fields_set
    for name, value in body.model_dump().items():
        if name in NOT_PARAMS:
            continue
        if (
            body.preset is not None
            and name in ("num_inference_steps", "guidance_scale")
            and name not in given
        ):
            params[name] = None  # the preset's (GenerationParams fills it)
            continue
        if name == "persons":
            params["persons"] = _person_fields(value, images, policy)
        elif name not in IMAGE_FIELDS:
            params[name] = value
        elif isinstance(value, list):
            images[name] = [image_bytes(v, f"{name}[{i}]", policy) for i, v in enumerate(value)]
        elif value is not None:
            images[name] = image_bytes(value, name, policy)
        else:
            images[name] = None
    spec = JobSpec(method=method, params=params, images=images)
    if method == "instantid":
        check_instantid_faces(spec)
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
                mask=spec.images.get(f"{prefix}.mask_image"),
                ip_weight=fields.get("ip_weight"),
                cn_strength=fields.get("cn_strength"),
                start_at=fields.get("start_at"),
                end_at=fields.get("end_at"),
            )
        )
    return persons


def check_instantid_faces(spec: JobSpec) -> None:
    """face_image, or persons (with regions inside the image and disjoint): checked before anything is queued."""
    has_face = spec.images.get("face_image") is not None
    if not spec.params.get("persons"):
        if not has_face:
            raise ParameterError(
                "face_image", "required (or `persons`: several people, each with a face_image)"
            )
        return
    if has_face or spec.images.get("extra_face_images") or spec.images.get("mask_image") is not None:
        raise ParameterError(
            "persons", "replaces face_image, extra_face_images and mask_image: give each person's own instead"
        )
    from idforge.methods.instantid.persons import check_person_request
    from idforge.methods.persons import output_size, person_regions

    request = instantid_request(spec)
    check_person_request(request)
    person_regions(request.persons, output_size(request))


def warm_up_spec(method: str) -> JobSpec:
    """A tiny job for `method` on a synthetic face (not the one the tests and demos send, so no cache is primed
    for them), with every other parameter at the API's defaults."""
    from idforge.demo.samples import square_face_png
    from idforge.server.schemas import METHOD_BODIES

    face = base64.b64encode(square_face_png(size=160, box=(40, 36, 120, 116))).decode("ascii")
    fields: dict[str, Any] = {"prompt": "warm-up", "face_image": face, "width": 64, "height": 64, "seed": 0}
    if method == "insta-depth":
        fields["pose_image"] = face
    body = METHOD_BODIES[method](**fields)
    spec = build_spec(method, body, ImagePolicy(allow_urls=False))
    spec.params["num_inference_steps"] = 2  # below the API's minimum: only the warm-up may do this
    return spec


def _generation(params: dict[str, Any], num_images: int = 1) -> GenerationParams:
    """Sampler settings; the style is applied where the prompt is encoded (GenerationParams.style), so the recipe
    keeps the prompt as given beside the styled one."""
    return GenerationParams(
        prompt=params["prompt"],
        negative_prompt=params.get("negative_prompt") or "",
        steps=params["num_inference_steps"],
        guidance=params["guidance_scale"],
        seed=None if params["seed"] < 0 else params["seed"],
        width=params.get("width"),
        height=params.get("height"),
        num_images=num_images,
        style=params.get("style"),
        preset=params.get("preset"),
        best_of=params.get("best_of", 1),
        score_models=params.get("score_models"),
    )


_NAME_TO_FIELD = (
    (re.compile(r"^(persons\[\d+\]\.\w+)"), lambda m: m.group(1)),  # already a field path
    (re.compile(r"^person (\d+) face"), lambda m: f"persons[{int(m.group(1)) - 1}].face_image"),
    (re.compile(r"^person (\d+) mask"), lambda m: f"persons[{int(m.group(1)) - 1}].mask_image"),
    (re.compile(r"^person (\d+) (\w+)"), lambda m: f"persons[{int(m.group(1)) - 1}].{m.group(2)}"),
    (re.compile(r"^person (\d+)"), lambda m: f"persons[{int(m.group(1)) - 1}]"),
    (
        re.compile(r"^face image (\d+)$"),
        lambda m: "face_image" if m.group(1) == "0" else f"extra_face_images[{int(m.group(1)) - 1}]",
    ),
    (re.compile(r"pose"), lambda m: "pose_image"),
    (re.compile(r"keypoint|kps"), lambda m: "kps_image"),
    (re.compile(r"mask"), lambda m: "mask_image"),
    (re.compile(r"negative"), lambda m: "negative_image"),
    (re.compile(r"^(face|reference)"), lambda m: "face_image"),
)

_PARAM_TO_FIELD = {"steps": "num_inference_steps", "guidance": "guidance_scale", "seed": "seed"}


def field_for(name: str | None) -> str | None:
    """The request field an engine error names ("face image 0" -> face_image, "steps" -> num_inference_steps)."""
    if not name:
        return None
    if name in _PARAM_TO_FIELD:
        return _PARAM_TO_FIELD[name]
    for pattern, to_field in _NAME_TO_FIELD:
        match = pattern.search(name)
        if match:
            return to_field(match)
    return name


def make_generator(config: Any) -> EngineGenerator:
    """The real generator for a ServerConfig (models, device, dtype, fast path)."""
    from idforge.engine.session import ModelChoice

    models = ModelChoice(base=config.base, face_models=config.face_models, models_dirs=config.models_dirs)
    return EngineGenerator(
        models, device=config.device, dtype=config.dtype, fast=getattr(config, "fast", None)
    )


def instantid_request(spec: JobSpec):
    """The engine's InstantIDRequest for an InstantID job (one person, or several with `persons`)."""
    from idforge.methods.instantid.core import InstantIDRequest

    p = spec.params
    face = spec.images.get("face_image")
    return InstantIDRequest(
        faces=[face, *(spec.images.get("extra_face_images") or [])] if face is not None else [],
        persons=persons_from_spec(spec),
        generation=_generation(p, num_images=p["num_images"]),
        instantid=InstantIDParams(
            ip_weight=p["ip_weight"],
            cn_strength=p["cn_strength"],
            start_at=p["start_at"],
            end_at=p["end_at"],
            noise=p["noise"],
            combine_embeds=p["combine_embeds"],
            enhance_face_region=p["enhance_face_region"],
        ),
        pose=spec.images.get("pose_image"),
        kps_image=spec.images.get("kps_image"),
        mask=spec.images.get("mask_image"),
        pose_fallback=p["pose_fallback"],
    )


def _job_error(exc: Exception) -> Exception:
    """Bad input found while generating (no face, out-of-range combination) is a 400 naming the field; a set-up
    problem of the server (missing or wrong models) and anything else stays as it is (500, logged)."""
    if isinstance(exc, ModelFormatError | ModelNotFoundError) or not isinstance(exc, IdforgeError):
        return exc
    return JobError(400, str(exc), field_for(getattr(exc, "name", None)))


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
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from idforge.engine.session import Engine

            self._engine = Engine(self.models, device=self.device, dtype=self.dtype, fast=self.fast)
        return self._engine

    def warm_up(self, report: WarmUpReport, methods: Sequence[str] = WARM_UP_METHODS) -> dict[str, str]:
        """Load each method's default models with a 64x64, 2-step generation; returns the methods that cannot
        run here, with the reason (their requests will fail with 500 until the models are set up)."""
        unavailable: dict[str, str] = {}
        for method in methods:
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
        run = {"insta-depth": self._insta_depth, "instantid": self._instantid, "faceid": self._faceid}.get(
            spec.method
        )
        if run is None:
            raise JobError(400, f"unknown method {spec.method!r}")
        try:
            result, extras = run(spec, progress)
        except Exception as exc:
            error = _job_error(exc)
            if error is exc:
                raise  # a set-up problem of the server or a bug: 500, logged by the worker
            raise error from exc
        return _job_output(spec, result, extras)

    def generate_batch(
        self, specs: Sequence[JobSpec], progress: ProgressCallback
    ) -> list[JobOutput | BaseException]:
        """Several jobs that share a denoising pass (server/batching.py gave them one key): one output or one
        exception per job, in order. A job whose own inputs fail gets its error; the others still run."""
        methods = {spec.method for spec in specs}
        if methods != {"instantid"}:
            raise JobError(500, f"no batched path for {sorted(methods)}")
        from idforge.methods.instantid.batch import generate_instantid_batch

        outcomes: list[JobOutput | BaseException | None] = [None] * len(specs)
        requests, slots = [], []
        for index, spec in enumerate(specs):
            try:
                requests.append(instantid_request(spec))
                slots.append(index)
            except Exception as exc:  # noqa: BLE001 - a bad parameter of this job fails this job alone
                outcomes[index] = exc
        results = generate_instantid_batch(self.engine, requests, progress) if requests else []
        for index, result in zip(slots, results, strict=True):
            if isinstance(result, Exception):
                outcomes[index] = _job_error(result)
            else:
                outcomes[index] = _job_output(specs[index], result, {})
        return outcomes  # type: ignore[return-value]

    def _insta_depth(self, spec: JobSpec, progress: ProgressCallback):
        from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth

        p = spec.params
        request = InstaDepthRequest(
            face=spec.images["face_image"], pose=spec.images["pose_image"], generation=_generation(p)
        )
        result = generate_insta_depth(self.engine, request, progress)
        extras: dict[str, Image.Image] = {}
        if p["return_depth_map"] and isinstance(result.extras.get("depth_map"), Image.Image):
            extras["depth_map"] = result.extras["depth_map"]
        return result, extras

    def _instantid(self, spec: JobSpec, progress: ProgressCallback):
        from idforge.methods.instantid.generate import generate_instantid

        return generate_instantid(self.engine, instantid_request(spec), progress), {}

    def _faceid(self, spec: JobSpec, progress: ProgressCallback):
        from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
        from idforge.methods.faceid.generate import generate_faceid

        p = spec.params
        request = FaceIDRequest(
            faces=[spec.images["face_image"], *(spec.images.get("extra_face_images") or [])],
            generation=_generation(p, num_images=p["num_images"]),
            faceid=FaceIDParams(
                weight=p["weight"],
                weight_faceidv2=p["weight_faceidv2"],
                weight_type=p["weight_type"],
                combine_embeds=p["combine_embeds"],
                start_at=p["start_at"],
                end_at=p["end_at"],
                embeds_scaling=p["embeds_scaling"],
                lora_strength=p["lora_strength"],
                batch=p["batch"],
            ),
            negative_image=spec.images.get("negative_image"),
            attn_mask=spec.images.get("mask_image"),
            adapter=p["adapter"],
        )
        return generate_faceid(self.engine, request, progress), {}
