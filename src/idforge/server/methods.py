"""From validated request bodies to jobs, and from jobs to the engine: the only place that knows both sides.

`build_spec` runs on the HTTP side (in a thread: it may fetch URLs and decodes every image once, so bad images
fail with 400 before anything is queued or charged). `EngineGenerator` runs on the worker thread: it owns the
`Engine` (created on first use, so models load once, in the thread that uses them) and calls the method's
`generate_*` function.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from idforge.engine.params import GenerationParams, InstantIDParams
from idforge.errors import IdforgeError, ModelFormatError, ModelNotFoundError, ParameterError
from idforge.server.images import ImagePolicy, image_bytes
from idforge.server.jobs import JobError, JobOutput, JobSpec, ProgressCallback

IMAGE_FIELDS = ("face_image", "pose_image", "kps_image", "mask_image", "negative_image", "extra_face_images")


def output_count(method: str, body: Any) -> int:
    """How many images a request delivers (the price is per delivered image)."""
    if method == "faceid":
        refs = 1 + len(body.extra_face_images)
        return max(body.num_images, refs) if body.batch else body.num_images  # as FaceID's batch rule
    return 1


def build_spec(method: str, body: Any, policy: ImagePolicy) -> JobSpec:
    """Check cross-field rules and decode every image field; raises ParameterError / InputImageError."""
    if (body.width is None) != (body.height is None):
        raise ParameterError(
            "width" if body.width is None else "height", "give both width and height, or neither"
        )
    start, end = getattr(body, "start_at", None), getattr(body, "end_at", None)
    if start is not None and end is not None and end < start:
        raise ParameterError("end_at", f"{end} is before start_at {start}")
    if not body.base64 and output_count(method, body) > 1:
        raise ParameterError("base64", "several images need base64 true (a JPEG body holds one image)")
    images: dict[str, bytes | list[bytes] | None] = {}
    params: dict[str, Any] = {}
    for name, value in body.model_dump().items():
        if name not in IMAGE_FIELDS:
            params[name] = value
        elif isinstance(value, list):
            images[name] = [image_bytes(v, f"{name}[{i}]", policy) for i, v in enumerate(value)]
        elif value is not None:
            images[name] = image_bytes(value, name, policy)
        else:
            images[name] = None
    return JobSpec(method=method, params=params, images=images)


def _generation(params: dict[str, Any], num_images: int = 1) -> GenerationParams:
    return GenerationParams(
        prompt=params["prompt"],
        negative_prompt=params.get("negative_prompt") or "",
        steps=params["num_inference_steps"],
        guidance=params["guidance_scale"],
        seed=None if params["seed"] < 0 else params["seed"],
        width=params.get("width"),
        height=params.get("height"),
        num_images=num_images,
    )


_NAME_TO_FIELD = (
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

    def generate(self, spec: JobSpec, progress: ProgressCallback) -> JobOutput:
        run = {"insta-depth": self._insta_depth, "instantid": self._instantid, "faceid": self._faceid}.get(
            spec.method
        )
        if run is None:
            raise JobError(400, f"unknown method {spec.method!r}")
        try:
            result, extras = run(spec, progress)
        except (ModelFormatError, ModelNotFoundError):
            raise  # a set-up problem of the server: 500, logged by the worker
        except IdforgeError as exc:  # bad input found while generating (no face, out-of-range combination)
            raise JobError(400, str(exc), field_for(getattr(exc, "name", None))) from exc
        return JobOutput(
            images=list(result.images),
            seeds=list(result.seeds),
            extras=extras,
            warnings=list(result.warnings),
            timings={"engine_s": float(result.recipe.get("timings", {}).get("total_s", 0.0))},
        )

    def _insta_depth(self, spec: JobSpec, progress: ProgressCallback):
        from idforge.engine.insta_depth import InstaDepthRequest, generate_insta_depth

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
        from idforge.engine.instantid import InstantIDRequest, generate_instantid

        p = spec.params
        request = InstantIDRequest(
            faces=[spec.images["face_image"], *(spec.images.get("extra_face_images") or [])],
            generation=_generation(p),
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
        return generate_instantid(self.engine, request, progress), {}

    def _faceid(self, spec: JobSpec, progress: ProgressCallback):
        from idforge.engine.faceid import FaceIDParams, FaceIDRequest, generate_faceid

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
