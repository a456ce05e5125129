"""Insta Depth: InstantID plus an SDXL depth ControlNet driven by the pose image (SPEC.md section 4, seed 002).

Flow:
1. the face image gives the identity (InstantID's face path: embedding -> Resampler tokens);
2. the pose image gives the composition: the output size (InstantID's resize rule unless width/height are given),
   the keypoints of its largest face for IdentityNet (the face image's own keypoints when it has none, with a
   warning), and its depth map (estimator, or a depth map supplied directly) for the depth ControlNet;
3. one denoising loop: IP attention + IdentityNet (face tokens as context) + depth ControlNet (text as context),
   each with its own strength and start/end window, residuals summed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from idforge.control.depth import engine_depth_estimator
from idforge.engine.hashing import model_hash
from idforge.engine.inputs import load_named
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import recorded_images
from idforge.engine.result import GenerationResult
from idforge.engine.scoring import attach_identity
from idforge.engine.session import Engine
from idforge.engine.sizing import instantid_size
from idforge.errors import POSE, InputName, NoFaceError, ParameterError, check_range, check_window
from idforge.methods.instantid.core import (
    ExtraControl,
    ImageSource,
    InstantIDRequest,
    ProgressCallback,
    instantid_recipe,
    load_instantid_models,
    prepare_instantid,
    run_identity_generation,
)
from idforge.methods.instantid.params import InstantIDParams

NO_POSE_FACE_WARNING = "pose image has no face; using the face image's keypoints"
DEFAULT_DEPTH_CONTROLNET = "controlnet-depth-sdxl"
DEFAULT_DEPTH_ESTIMATOR = "depth-anything-v2-small"


@dataclass
class InstaDepthParams:
    """The depth ControlNet's controls; defaults from InstantID's multi-ControlNet demo (depth strength 0.5)."""

    depth_strength: float = 0.5
    depth_start_at: float = 0.0
    depth_end_at: float = 1.0

    def __post_init__(self) -> None:
        check_range("depth_strength", self.depth_strength, 0.0, 10.0)
        check_window(self.depth_start_at, self.depth_end_at, ("depth_start_at", "depth_end_at"))


@dataclass
class InstaDepthRequest:
    """One Insta Depth call: identity face, pose image (or a ready depth map), parameters and model overrides."""

    face: ImageSource
    pose: ImageSource
    generation: GenerationParams = field(default_factory=GenerationParams)
    instantid: InstantIDParams = field(default_factory=InstantIDParams)
    depth: InstaDepthParams = field(default_factory=InstaDepthParams)
    depth_map: ImageSource | None = None  # supplied directly: the estimator is not run (nor loaded)
    base: str | None = None
    instantid_model: str | None = None
    face_models: str | None = None
    depth_controlnet: str | None = None
    depth_estimator: str | None = None

    def __post_init__(self) -> None:
        self.instantid = self.instantid.with_preset(self.generation.preset)  # the preset's, when not given


def output_size(gen: GenerationParams, pose_size: tuple[int, int]) -> tuple[int, int]:
    """Width and height: both given, or InstantID's resize rule on the pose image."""
    if gen.width is not None and gen.height is not None:
        return gen.width, gen.height
    if gen.width is not None or gen.height is not None:
        raise ParameterError(
            "width/height", "give both width and height, or neither (size from the pose image)"
        )
    return instantid_size(*pose_size)


def depth_controlnet_path(engine: Engine, spec: str | None) -> Path:
    """The depth ControlNet named by the request, the engine's choice, or the SDXL depth preset."""
    spec = spec if spec is not None else engine.models.depth_controlnet
    if spec is None:
        return Path(engine.store.default("controlnet", DEFAULT_DEPTH_CONTROLNET).path)
    return Path(engine.store.resolve("controlnet", spec).path)


def generate_insta_depth(
    engine: Engine, request: InstaDepthRequest, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Run Insta Depth end to end: images, recipe, the depth map and keypoint image as extras."""
    if request.generation.best_of > 1:
        from idforge.methods.best_of import generate_best_of

        return generate_best_of(engine, generate_insta_depth, request, progress)
    started = time.perf_counter()
    params = request.instantid
    # Every input image is decoded before any model loads: bad input fails fast and costs nothing.
    face = load_named(request.face, InputName("face image", "face_image"))
    pose = load_named(request.pose, POSE)
    pose_image, pose_name = pose.image, pose.name
    width, height = output_size(request.generation, pose_image.size)
    gen = dataclasses.replace(request.generation, width=width, height=height)

    depth_map: Image.Image | None = None
    if request.depth_map is not None:
        depth_map = load_named(request.depth_map, InputName("depth map", "depth_map")).image
        if depth_map.size != (width, height):
            depth_map = depth_map.resize((width, height), Image.Resampling.BICUBIC)

    models = load_instantid_models(engine, request.base, request.instantid_model)
    cn_path = depth_controlnet_path(engine, request.depth_controlnet)
    depth_cn = engine.controlnet(cn_path, models.base, "depth ControlNet")
    estimator = None
    if depth_map is None:
        estimator = engine_depth_estimator(engine, request.depth_estimator)

    # IdentityNet keypoints: the pose image's largest face, else the face image's own (saying so).
    warnings: list[str] = []
    analyzer = engine.face_analyzer(request.face_models)
    try:
        engine.analyze_face(analyzer, pose_image, name=pose_name, pick="largest", det_size=params.det_size)
        kps_source = "pose"
    except NoFaceError:
        kps_source = "face"
        warnings.append(NO_POSE_FACE_WARNING)
    inner = InstantIDRequest(
        faces=[face],
        generation=gen,
        instantid=params,
        pose=pose if kps_source == "pose" else None,
        base=request.base,
        instantid_model=request.instantid_model,
        face_models=request.face_models,
    )
    prepared = prepare_instantid(engine, inner, models.projection)
    if depth_map is None:
        assert estimator is not None  # loaded above exactly when no depth map was given
        depth_map = estimator.estimate(pose_image, (width, height))

    depth = request.depth
    extra = ExtraControl(
        name="depth",
        model=depth_cn,
        image=depth_map,
        strength=depth.depth_strength,
        start_at=depth.depth_start_at,
        end_at=depth.depth_end_at,
    )
    run = run_identity_generation(
        engine, models, prepared, gen, params, extra_controls=[extra], progress=progress
    )

    recipe = instantid_recipe(
        engine,
        inner,
        models,
        prepared,
        run,
        started,
        method="insta_depth",
        params={"depth": depth},
        extra_models={
            "depth_controlnet": {"source": str(cn_path), "sha256": model_hash(cn_path)},
            "depth_estimator": (
                {"source": str(estimator.folder), "sha256": model_hash(estimator.folder)}
                if estimator
                else None
            ),
        },
        inputs={
            "kps_source": kps_source,
            **recorded_images(face=request.face, pose=request.pose, depth_map=request.depth_map),
        },
    )
    result = GenerationResult(
        images=run.images,
        seeds=run.seeds,
        recipe=recipe.to_dict(),
        extras={"depth_map": depth_map, "kps_image": prepared.kps_image},
        warnings=warnings + prepared.warnings,
        latents=run.latents,
    )
    return attach_identity(
        engine,
        result,
        [face],
        generation_pack=request.face_models,
        default_pack="antelopev2",
        pick=params.pick,
    )
