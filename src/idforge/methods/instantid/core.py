"""InstantID: face embedding -> Resampler tokens into the UNet's IP cross-attention, plus IdentityNet on keypoints.

Flow, top to bottom (SPEC.md section 2):
1. analyse every reference face (largest by default), combine their raw embeddings (average | norm average | concat);
2. project cond and uncond embeddings (zeros, or `noise * U[0,1)` seeded from the embedding) through the Resampler;
3. keypoints from the pose image's face, or a ready keypoint image, or the reference face; draw them at output size;
4. denoise with IP attention (ip_weight) and IdentityNet (cn_strength, face tokens as context), both gated by
   start_at/end_at on the noise schedule and restricted by the mask (and the face box with "enhance face region").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from idforge.engine.base import BaseModel, pil_to_control_tensor
from idforge.engine.hashing import model_hash
from idforge.engine.inputs import ImageInput, ImageSource, image_name, load_named
from idforge.engine.loop import ControlUnit
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import PassLayout, Recipe, build_recipe, recorded_images
from idforge.engine.sampling import sample_and_decode
from idforge.engine.scoring import reference_advice
from idforge.engine.seeds import image_seeds, resolve_seed
from idforge.engine.session import Engine, image_digest
from idforge.engine.sizing import box_mask, instantid_size, scale_box, scale_kps
from idforge.errors import (
    KPS,
    POSE,
    InputName,
    ModelFormatError,
    NoFaceError,
    ParameterError,
    face_input,
)
from idforge.identity.attention import timestep_window
from idforge.imageio import load_mask
from idforge.methods.instantid.params import InstantIDParams, resolved

ProgressCallback = Callable[[int, int], None]


@dataclass
class InstantIDRequest:
    """One InstantID call: reference faces, optional pose/keypoints and mask, and all parameters."""

    faces: Sequence[ImageInput] = ()
    generation: GenerationParams = field(default_factory=GenerationParams)
    instantid: InstantIDParams = field(default_factory=InstantIDParams)
    pose: ImageInput | None = None  # a photo whose face gives the keypoints
    kps_image: ImageInput | None = None  # an already drawn keypoint image
    mask: ImageSource | None = None
    pose_fallback: bool = False  # use the reference keypoints when the pose image has no face
    base: str | None = None
    instantid_model: str | None = None
    face_models: str | None = None
    # Several people in one image (methods/instantid/persons.py): each with its own faces, strengths, window and region;
    # `faces` and `mask` stay empty then, and pose/kps_image give the keypoints of every person.
    persons: Sequence[Any] = ()

    def __post_init__(self) -> None:
        self.instantid = self.instantid.with_preset(self.generation.preset)  # the preset's, when not given


@dataclass
class PreparedInstantID:
    """What the face path produced, before denoising (also used by Insta Depth)."""

    cond_tokens: torch.Tensor  # (1, T, C)
    uncond_tokens: torch.Tensor  # (1, T, C)
    kps_image: Image.Image  # at output size
    width: int
    height: int
    face_box: np.ndarray | None  # in output coordinates (for "enhance face region")
    faces_info: list[dict[str, Any]]
    warnings: list[str]


def load_request_images(request: InstantIDRequest) -> InstantIDRequest:
    """A copy of the request with every image decoded and checked: bad input fails before any model loads."""
    if not request.faces:
        raise ParameterError("face", "at least one reference face image is needed")
    faces = [load_named(source, face_input(i)) for i, source in enumerate(request.faces)]
    pose = load_named(request.pose, POSE) if request.pose is not None else None
    kps_image = load_named(request.kps_image, KPS) if request.kps_image is not None else None
    if request.mask is not None:
        load_mask(
            request.mask, (8, 8), name=image_name(request.mask, InputName("mask", "mask_image"))
        )  # readable? (alpha matters: keep source)
    return replace(request, faces=faces, pose=pose, kps_image=kps_image)


def instantid_paths(engine: Engine, spec: str | None) -> tuple[Path, Path]:
    """(IdentityNet, ip-adapter file): an InstantX/InstantID folder, or ComfyUI's two parts kept apart."""
    resolved = engine.store.resolve("instantid", spec if spec is not None else engine.models.instantid)
    parts = resolved.parts or {}
    if "identitynet" not in parts or "ipadapter" not in parts:
        raise ModelFormatError(
            f"InstantID model {resolved.path}: expected ControlNetModel/ and ip-adapter.bin (the InstantX/InstantID layout)"
        )
    return Path(parts["identitynet"]), Path(parts["ipadapter"])


@dataclass
class IdentityTokens:
    """One identity's reference faces and its projected tokens (InstantID's face path, steps 1-2)."""

    cond_tokens: torch.Tensor  # (1, T, C)
    uncond_tokens: torch.Tensor  # (1, T, C)
    reference_faces: list[tuple[Image.Image, Any]]  # (image, Face) per reference
    faces_info: list[dict[str, Any]]
    warnings: list[str]  # reference advice (small, blurred, turned faces; several faces)


def identity_tokens(
    engine: Engine,
    analyzer: Any,
    faces: Sequence[ImageInput],
    params: InstantIDParams,
    projection: torch.nn.Module,
    person: int | None = None,
) -> IdentityTokens:
    """Analyse the reference faces, combine their raw embeddings and project cond and uncond through the
    Resampler. `person` (1-based) names in-memory images as that person's ("person 2 face image 0")."""
    if not faces:
        raise ParameterError("face", "at least one reference face image is needed")
    reference_faces = []
    faces_info = []
    warnings: list[str] = []
    for index, source in enumerate(faces):
        named = load_named(source, face_input(index, person=person))
        face = engine.analyze_face(
            analyzer, named.image, name=named.name, pick=params.pick, det_size=params.det_size
        )
        reference_faces.append((named.image, face))
        warnings += reference_advice(
            engine, analyzer, named.image, name=named.name, pick=params.pick, det_size=params.det_size
        )
        faces_info.append(
            {
                "image": named.name,
                "bbox": [float(v) for v in face.bbox],
                "score": float(face.score),
                "pixels_sha256": image_digest(named.image),
            }
        )

    from idforge.identity.embeds import combine_instantid, instantid_uncond_embedding

    embeddings = [np.asarray(face.embedding, dtype=np.float32) for _, face in reference_faces]
    combined = combine_instantid(embeddings, params.combine_embeds)  # (1, n, 512)
    uncond = torch.stack([instantid_uncond_embedding(e, params.noise) for e in combined[0]]).unsqueeze(0)

    device = engine.device
    with torch.no_grad():
        cond_tokens = projection(combined.to(device))
        uncond_tokens = projection(uncond.to(device=device, dtype=combined.dtype))
    return IdentityTokens(cond_tokens, uncond_tokens, reference_faces, faces_info, warnings)


def prepare_instantid(
    engine: Engine, request: InstantIDRequest, projection: torch.nn.Module
) -> PreparedInstantID:
    """Face analysis, embedding combination, projection and the keypoint image."""
    params = request.instantid
    analyzer = engine.face_analyzer(request.face_models)
    identity = identity_tokens(engine, analyzer, request.faces, params, projection)
    warnings = list(identity.warnings)
    cond_tokens, uncond_tokens = identity.cond_tokens, identity.uncond_tokens
    reference_faces, faces_info = identity.reference_faces, identity.faces_info

    # Keypoints: pose photo > ready keypoint image > first reference face.
    from idforge.faces.draw import draw_kps

    kps_source_size: tuple[int, int]
    ready_kps: Image.Image | None = None
    kps: np.ndarray | None = None
    face_box: np.ndarray | None = None
    if request.kps_image is not None:
        ready_kps = load_named(request.kps_image, KPS).image
        kps_source_size = ready_kps.size
    elif request.pose is not None:
        pose = load_named(request.pose, POSE)
        pose_image, pose_name = pose.image, pose.name
        kps_source_size = pose_image.size
        try:
            pose_face = engine.analyze_face(
                analyzer, pose_image, name=pose_name, pick="largest", det_size=params.det_size
            )
            kps, face_box = pose_face.kps, pose_face.bbox
        except NoFaceError as exc:
            if not request.pose_fallback:
                raise NoFaceError(
                    pose_name,
                    exc.sizes_tried,
                    "pass pose_fallback (CLI: --pose-fallback) to use the reference keypoints",
                ) from None
            image, face = reference_faces[0]
            kps_source_size = image.size
            kps, face_box = face.kps, face.bbox
            warnings.append(f"{pose_name}: no face found; using the keypoints of the reference face instead")
    else:
        image, face = reference_faces[0]
        kps_source_size = image.size
        kps, face_box = face.kps, face.bbox

    gen = request.generation
    if gen.width is not None and gen.height is not None:
        width, height = gen.width, gen.height
    elif gen.width is not None or gen.height is not None:
        raise ParameterError(
            "width/height", "give both width and height, or neither (size from the keypoint image)"
        )
    else:
        width, height = instantid_size(*kps_source_size)

    if ready_kps is not None:
        kps_image = ready_kps.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    else:
        assert kps is not None and face_box is not None  # from the pose photo or the first reference face
        kps_image = draw_kps((width, height), scale_kps(kps, kps_source_size, (width, height)))
        face_box = scale_box(face_box, kps_source_size, (width, height))
    return PreparedInstantID(
        cond_tokens, uncond_tokens, kps_image, width, height, face_box, faces_info, warnings
    )


def latent_mask(
    mask: np.ndarray | None, batch: int, latent_hw: tuple[int, int], device: torch.device
) -> torch.Tensor | None:
    """(B, 1, h, w) mask at latent resolution from an (H, W) float mask."""
    if mask is None:
        return None
    tensor = torch.from_numpy(mask).float()[None, None]
    tensor = torch.nn.functional.interpolate(tensor, size=latent_hw, mode="bilinear", align_corners=False)
    return tensor.repeat(batch, 1, 1, 1).to(device)


@dataclass
class InstantIDModels:
    """The models an InstantID generation needs, loaded (and cached) by the engine."""

    base: BaseModel
    identitynet: ControlNetModel
    identitynet_path: Path
    adapter: Any  # AdapterCheckpoint
    adapter_path: Path
    projection: torch.nn.Module


@dataclass
class ExtraControl:
    """A ControlNet beside IdentityNet (depth, pose, canny): text as its context, its own strength and window."""

    name: str
    model: ControlNetModel
    image: Image.Image  # at output size
    strength: float
    start_at: float = 0.0
    end_at: float = 1.0


@dataclass
class IdentityRun:
    """What the denoise-and-decode part returns to the method that builds the recipe."""

    images: list[Image.Image]
    seed: int
    seeds: list[int]
    latents: torch.Tensor


def load_instantid_models(
    engine: Engine, base_spec: str | None, instantid_spec: str | None
) -> InstantIDModels:
    """Base, IdentityNet, ip-adapter checkpoint and its projection; refuses a non-SDXL base or a wrong adapter."""
    base = engine.base_model(base_spec)
    if base.family != "sdxl":
        raise ModelFormatError(f"InstantID needs an SDXL base model; {base.source} is {base.family}")
    identitynet_path, adapter_path = instantid_paths(engine, instantid_spec)
    adapter = engine.adapter(adapter_path)
    from idforge.identity.checkpoint import check_compatible, check_expected_kind

    check_expected_kind(str(adapter_path), adapter.kind, "instantid")
    check_compatible(adapter, base.unet, base_name=base.source)
    identitynet = engine.controlnet(identitynet_path, base, "IdentityNet")
    projection = engine.projection(adapter_path)
    return InstantIDModels(base, identitynet, identitynet_path, adapter, adapter_path, projection)


def attach_instantid(
    engine: Engine,
    attention,  # IdentityAttention
    models: InstantIDModels,
    prepared: PreparedInstantID,
    params: InstantIDParams,
    mask_source: ImageSource | None,
    batch: int,
    latent_hw: tuple[int, int],
    name: str = "instantid",
) -> ControlUnit:
    """InstantID's two halves on a generation: its IP adapter registered on `attention` as `name` (ip_weight,
    window, mask) and IdentityNet as a ControlUnit with the face tokens as context (cn_strength, window, mask and
    the optional face-box region). Used alone, with a depth ControlNet, beside FaceID, or once per person
    (`mask_source` then is the person's region as an (H, W) array)."""
    width, height = prepared.width, prepared.height
    dtype = models.base.unet.dtype
    mask = load_mask(mask_source, (width, height)) if mask_source is not None else None
    control_mask = mask
    if params.enhance_face_region and prepared.face_box is not None:
        region = box_mask(prepared.face_box, width, height)
        control_mask = region if control_mask is None else control_mask * region
    tokens = (
        prepared.uncond_tokens.to(dtype).repeat(batch, 1, 1),
        prepared.cond_tokens.to(dtype).repeat(batch, 1, 1),
    )
    kps_images = [prepared.kps_image] * batch
    control = latent_mask(control_mask, batch, latent_hw, engine.device)
    return install_identity(
        engine, attention, models, params, name, tokens, kps_images, mask=mask, control_mask=control
    )


def install_identity(
    engine: Engine,
    attention,  # IdentityAttention
    models: InstantIDModels,
    params: InstantIDParams,
    name: str,
    tokens: tuple[torch.Tensor, torch.Tensor],
    kps_images: list[Image.Image],
    *,
    mask: np.ndarray | None = None,
    control_mask: torch.Tensor | None = None,
) -> ControlUnit:
    """The IP adapter's inputs on `attention` and IdentityNet's unit, from (uncond, cond) face tokens and one
    keypoint image per sample: what a single request (one face for the batch) and a batched pass share."""
    uncond_tokens, cond_tokens = tokens
    width, height = kps_images[0].size
    attention.add_adapter(name, models.adapter.ip_layers)
    attention.set_adapter_inputs(
        name,
        cond_tokens=cond_tokens,
        uncond_tokens=uncond_tokens,
        weight=params.ip_weight,
        weight_type="linear",
        scaling="V only",
        start_at=params.start_at,
        end_at=params.end_at,
        mask=None if mask is None else torch.from_numpy(mask),
    )
    return ControlUnit(
        name="identitynet" if name == "instantid" else f"identitynet:{name}",
        model=models.identitynet,
        image=pil_to_control_tensor(kps_images, width, height).to(engine.device, models.base.unet.dtype),
        strength=resolved(params.cn_strength),
        window=timestep_window(params.start_at, params.end_at),
        face_tokens=(uncond_tokens, cond_tokens),
        mask=control_mask,
    )


def run_identity_generation(
    engine: Engine,
    models: InstantIDModels,
    prepared: PreparedInstantID,
    gen: GenerationParams,
    params: InstantIDParams,
    mask_source: ImageSource | None = None,
    extra_controls: Sequence[ExtraControl] = (),
    progress: ProgressCallback | None = None,
) -> IdentityRun:
    """Denoise with IP attention + IdentityNet (+ any extra ControlNets, residuals summed) and decode."""
    from idforge.identity.attention import IdentityAttention

    base = models.base
    width, height = prepared.width, prepared.height
    seed = resolve_seed(gen.seed)
    seeds = image_seeds(seed, gen.num_images)
    latent_hw = (height // base.vae_scale_factor, width // base.vae_scale_factor)
    dtype = base.unet.dtype

    attention = IdentityAttention(base.unet)
    controls = [
        attach_instantid(engine, attention, models, prepared, params, mask_source, len(seeds), latent_hw)
    ]
    for extra in extra_controls:
        controls.append(
            ControlUnit(
                name=extra.name,
                model=extra.model,
                image=pil_to_control_tensor([extra.image] * len(seeds), width, height).to(
                    engine.device, dtype
                ),
                strength=extra.strength,
                window=timestep_window(extra.start_at, extra.end_at),
            )
        )
    latents, images = sample_and_decode(
        engine, base, gen, seeds, (width, height), attention, controls, progress
    )
    return IdentityRun(images, seed, seeds, latents)


def instantid_recipe(
    engine: Engine,
    request: InstantIDRequest,
    models: InstantIDModels,
    prepared: PreparedInstantID,
    run: IdentityRun,
    started: float,
    method: str = "instantid",
    *,
    params: dict[str, Any] | None = None,
    extra_models: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
) -> Recipe:
    """The recipe of an InstantID generation; methods built on it (Insta Depth, several people, batches) add their
    parameter objects, models, inputs and sections."""
    return build_recipe(
        engine,
        models.base,
        request.generation,
        method=method,
        layout=PassLayout(run.seeds, prepared.width, prepared.height, started),
        params={"instantid": request.instantid} | (params or {}),
        models=instantid_model_entries(engine, request, models) | (extra_models or {}),
        inputs=instantid_inputs(request, prepared) | (inputs or {}),
        sections=sections,
    )


def instantid_model_entries(
    engine: Engine, request: InstantIDRequest, models: InstantIDModels
) -> dict[str, Any]:
    """IdentityNet, the ip-adapter and the face pack, each with its source (and hash): the recipe's entries."""
    return {
        "identitynet": {
            "source": str(models.identitynet_path),
            "sha256": model_hash(models.identitynet_path),
        },
        "ip_adapter": {"source": str(models.adapter_path), "sha256": model_hash(models.adapter_path)},
        "face_models": {"source": str(engine.face_analyzer(request.face_models).pack_dir)},
    }


def instantid_inputs(request: InstantIDRequest, prepared: PreparedInstantID) -> dict[str, Any]:
    """The recipe's inputs: reference faces (name, box, score, pixels_sha256), pose, keypoint image and mask."""
    return {
        "faces": prepared.faces_info,
        **recorded_images(pose=request.pose, kps_image=request.kps_image, mask=request.mask),
    }
