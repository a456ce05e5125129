"""IP-Adapter FaceID (seed 001, IPAdapterFaceID / IPAAdapterFaceIDBatch) on the shared engine loop.

Flow, top to bottom (SPEC.md section 3):
1. resolve the adapter and read its kind from the checkpoint (faceid, plus, plusv2, portrait, portrait-unnorm);
   the base follows the adapter's family unless named, and a base the adapter does not fit is refused before any
   generation; find the LoRA (embedded keys, `--lora`, or `<adapter>_lora.safetensors`) and, for plus models, the
   CLIP vision encoder;
2. analyse every reference face (highest score by default, buffalo_l), take the normed embedding (raw for
   portrait-unnorm) and the aligned crop (`face_image`), and CLIP features of the crop for plus models;
3. combine (concat | add | subtract | average | norm average) and project cond and uncond (zeros; CLIP uncond
   from `image_negative` or black), or in batch mode project each reference alone: reference i conditions
   output i only, through per-sample IP tokens;
4. merge the LoRA (restored exactly afterwards) and denoise with the FaceID IP attention (weight, weight type,
   embeds scaling, start/end, attn mask), optionally next to InstantID (its own IP adapter and IdentityNet).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from idforge.engine.base import BaseModel
from idforge.engine.hashing import model_hash
from idforge.engine.inputs import ImageInput, ImageSource, image_name, load_named
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import PassLayout, Recipe, build_recipe, recorded_images
from idforge.engine.scoring import reference_advice
from idforge.engine.session import Engine, image_digest
from idforge.errors import (
    InputImageError,
    InputName,
    ModelFormatError,
    ModelNotFoundError,
    NoFaceError,
    ParameterError,
    check_choice,
    check_range,
    face_input,
)
from idforge.identity.attention import SCALING_MODES
from idforge.identity.embeds import FACEID_COMBINE_MODES
from idforge.identity.weight_types import WEIGHT_TYPES
from idforge.imageio import load_mask
from idforge.methods.body import sampler_defaults
from idforge.methods.controls import IdentityControls
from idforge.methods.faceid.body import FaceIDBody

ProgressCallback = Callable[[int, int], None]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


DEFAULT_SIZE = {"sdxl": 1024, "sd15": 512}


# Used when the caller names no adapter: the plusv2 model of the base's family (ComfyUI's usual FaceID choice).
DEFAULT_ADAPTER = {"sdxl": "faceid-plusv2-sdxl", "sd15": "faceid-plusv2-sd15"}


LORA_KINDS = ("faceid", "faceid-plus", "faceid-plusv2")


def _normalise(name: str) -> str:
    return name.replace("-", " ").replace("_", " ").strip()


def _normalise_scaling(name: str) -> str:
    """Accept CLI spellings ('v-only', 'k+v-w/-c-penalty') for the node's names."""
    folded = {mode.lower().replace(" ", ""): mode for mode in SCALING_MODES}
    key = name.lower().replace(" ", "").replace("-", "").replace("_", "")
    return folded.get(key, name)


@dataclass
class FaceIDParams(IdentityControls):
    """Every control of ComfyUI's IPAdapter FaceID (Batch) node (seed 001) plus our batch/face options."""

    PRESET_STRENGTHS = {"weight": "faceid_weight"}

    weight: float | None = None  # None: the few-step preset's faceid_weight, else 1.0 (methods/presets.py)
    weight_faceidv2: float = 1.0
    weight_type: str = "linear"
    combine_embeds: str = "concat"
    start_at: float = 0.0
    end_at: float = 1.0
    embeds_scaling: str = "V only"
    lora_strength: float = 0.6
    batch: bool = False  # unfold: reference i conditions output i (the Batch node)
    skip_missing: bool = False  # batch: drop a reference with no face instead of failing
    pick: str | int = "score"  # FaceID's reference takes the highest-scoring face
    det_size: int = 640

    def __post_init__(self) -> None:
        if self.weight is not None:
            check_range("weight", self.weight, -1.0, 3.0)
        check_range("weight_faceidv2", self.weight_faceidv2, -1.0, 5.0)
        self.weight_type = check_choice("weight_type", self.weight_type.strip(), WEIGHT_TYPES)
        self.combine_embeds = check_choice(
            "combine_embeds", _normalise(self.combine_embeds), FACEID_COMBINE_MODES
        )
        self.check_controls()
        self.embeds_scaling = check_choice(
            "embeds_scaling", _normalise_scaling(self.embeds_scaling), SCALING_MODES
        )
        check_range("lora_strength", self.lora_strength, -4.0, 4.0)

    def adapter_inputs(self) -> dict[str, Any]:
        """How its adapter acts on the IP attention (`IdentityAttention.set_adapter_inputs`)."""
        return {
            "weight": self.weight,
            "weight_type": self.weight_type,
            "scaling": self.embeds_scaling,
        } | self.window()


def check_best_of(best_of: int, batch: bool) -> None:
    """Best-of-N keeps one image of N candidates, batch mode one output per reference: they cannot combine. The
    registry's `check` (CLI and HTTP, before anything is queued or charged) and `generate_faceid` both ask here."""
    if best_of > 1 and batch:
        raise ParameterError("best_of", "best-of-N cannot be combined with batch mode (one output per face)")


@dataclass
class FaceIDRequest:
    """One FaceID call: reference faces (files, images or folders of images), parameters and models."""

    faces: Sequence[ImageInput] = ()
    generation: GenerationParams = field(default_factory=sampler_defaults(FaceIDBody))
    faceid: FaceIDParams = field(default_factory=FaceIDParams)
    negative_image: ImageInput | None = None  # image_negative: CLIP uncond input (plus models)
    attn_mask: ImageSource | None = None
    adapter: str | None = None  # path, preset, file name or hub id
    lora: str | None = None  # separate *_lora.safetensors (overrides embedded LoRA keys)
    clip_vision: str | None = None
    base: str | None = None
    face_models: str | None = None  # default buffalo_l
    # Several people in one image (methods/faceid/persons.py): each Person with its faces, weight, window and
    # region; `faces` and `attn_mask` stay empty then.
    persons: Sequence[Any] = ()
    # InstantID on the same faces in the same generation (an InstantIDRequest; `idforge faceid --with-instantid`)
    instantid: Any = None

    def __post_init__(self) -> None:
        self.faceid = self.faceid.with_preset(self.generation.preset)  # the preset's, when not given


@dataclass
class FaceIDModels:
    base: BaseModel
    adapter: Any  # AdapterCheckpoint
    adapter_path: Path
    projection: torch.nn.Module
    lora_path: Path | None  # a LoRA file; None with embedded keys or no LoRA
    lora_source: str | None  # "embedded", a path, or None (no LoRA)
    clip: tuple[Any, Any] | None  # (CLIPVisionModelWithProjection, CLIPImageProcessor) for plus models
    clip_path: Path | None
    warnings: list[str]


@dataclass
class PreparedFaceID:
    """Projected tokens: (1, T', C) shared by every output, or (B, T, C) one row per output in batch mode."""

    cond_tokens: torch.Tensor
    uncond_tokens: torch.Tensor
    face_images: list[Image.Image]  # aligned crops, one per reference used
    faces_info: list[dict[str, Any]]
    batch_references: list[int] | None  # batch mode: reference index of each output
    warnings: list[str]


def expand_face_sources(faces: Sequence[ImageInput]) -> list[ImageInput]:
    """Folders become their image files in name order; everything else stays as given."""
    expanded: list[ImageInput] = []
    for source in faces:
        if isinstance(source, str | os.PathLike) and Path(source).is_dir():
            files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputImageError(str(source), "folder holds no images (.png, .jpg, .webp, ...)")
            expanded.extend(files)
        else:
            expanded.append(source)
    if not expanded:
        raise ParameterError("face", "at least one reference face image is needed")
    return expanded


def _load(source: ImageInput, fallback: str) -> Image.Image:
    return load_named(source, fallback).image


def decode_inputs(request: FaceIDRequest) -> FaceIDRequest:
    """A copy of the request with every image decoded and checked: bad input fails before any model loads."""
    faces = [load_named(source, face_input(i)) for i, source in enumerate(expand_face_sources(request.faces))]
    negative = request.negative_image
    if negative is not None:
        negative = load_named(negative, "negative image")
    if request.attn_mask is not None:
        load_mask(
            request.attn_mask,
            (8, 8),
            name=image_name(request.attn_mask, InputName("attn mask", "mask_image")),
        )
    return replace(request, faces=faces, negative_image=negative)


def _family_guesses(ckpt) -> list[str]:
    """Base families to try for an adapter: by its published width, else SDXL then SD1.5 (tiny kits)."""
    if ckpt.cross_dim == 2048:
        return ["sdxl"]
    if ckpt.cross_dim == 768:
        return ["sd15"]
    return ["sdxl", "sd15"]


def _pick_base(engine: Engine, spec: str | None, ckpt) -> BaseModel:
    """The named base (checked), or the default base of the adapter's family."""
    from idforge.identity.checkpoint import check_compatible

    if spec is not None:
        base = engine.base_model(spec)
        check_compatible(ckpt, base.unet, base_name=base.source)
        return base
    first_error: ModelFormatError | None = None
    for family in _family_guesses(ckpt):
        base = engine.base_model(None, family=family)
        try:
            check_compatible(ckpt, base.unet, base_name=base.source)
            return base
        except ModelFormatError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _find_lora_file(engine: Engine, adapter_path: Path) -> Path | None:
    """`<adapter stem>_lora.safetensors` beside the adapter or in the models folders' loras/."""
    name = f"{adapter_path.stem}_lora.safetensors"
    beside = adapter_path.with_name(name)
    if beside.is_file():
        return beside
    try:
        return Path(engine.store.resolve("lora", name, local_only=True).path)
    except (ModelNotFoundError, ParameterError):
        return None


def load_faceid_models(engine: Engine, request: FaceIDRequest) -> FaceIDModels:
    """Adapter, base, projection, LoRA and CLIP vision; every mismatch is refused before generation."""
    from idforge.identity.checkpoint import check_expected_kind

    warnings: list[str] = []
    base_spec = request.base if request.base is not None else engine.models.base
    adapter_spec = request.adapter if request.adapter is not None else engine.models.faceid_adapter
    if adapter_spec is None:
        family = engine.base_model(base_spec).family if base_spec is not None else "sdxl"
        adapter_path = Path(engine.store.default("ipadapter", DEFAULT_ADAPTER[family]).path)
    else:
        adapter_path = Path(engine.store.resolve("ipadapter", adapter_spec).path)
    ckpt = engine.adapter(adapter_path)
    check_expected_kind(str(adapter_path), ckpt.kind, "faceid")
    base = _pick_base(engine, base_spec, ckpt)
    projection = engine.projection(adapter_path)

    lora_path: Path | None = None
    lora_source: str | None = None
    if request.lora is not None:
        lora_path = Path(engine.store.resolve("lora", request.lora).path)
        lora_source = str(lora_path)
    elif ckpt.lora:
        lora_source = "embedded"
    elif ckpt.kind in LORA_KINDS:
        lora_path = _find_lora_file(engine, adapter_path)
        if lora_path is None:
            warnings.append(
                f"{adapter_path.name}: no LoRA (no embedded keys, no {adapter_path.stem}_lora.safetensors found); "
                "likeness is usually weaker without it"
            )
        else:
            lora_source = str(lora_path)

    clip = clip_path = None
    if ckpt.needs_clip:
        spec = request.clip_vision if request.clip_vision is not None else engine.models.clip_vision
        clip_path = Path(engine.store.resolve("clip_vision", spec).path)
        from idforge.methods.faceid.clip import load_clip_vision

        clip = engine.cached(
            "clip_vision", str(clip_path), lambda: load_clip_vision(clip_path, engine.device, engine.dtype)
        )
        width = clip[0].config.hidden_size
        if width != ckpt.clip_width:
            raise ModelFormatError(
                f"CLIP vision '{clip_path.name}' is {width} wide but adapter '{adapter_path.name}' expects "
                f"{ckpt.clip_width} (ViT-H/14 for the published plus models)"
            )
    elif request.clip_vision is not None:
        warnings.append(
            f"{adapter_path.name} ({ckpt.kind}) uses no CLIP vision encoder; --clip-vision ignored"
        )
    return FaceIDModels(
        base, ckpt, adapter_path, projection, lora_path, lora_source, clip, clip_path, warnings
    )


@contextmanager
def faceid_lora(models: FaceIDModels, strength: float) -> Iterator[None]:
    """Merge the FaceID LoRA into the UNet for one generation; the UNet is restored bit for bit afterwards."""
    from idforge.identity.lora import apply_faceid_lora, apply_lora_file

    handle = None
    if models.lora_source is not None and strength != 0.0:
        unet = models.base.unet
        if models.lora_path is not None:
            handle = apply_lora_file(unet, models.lora_path, strength)
        else:
            handle = apply_faceid_lora(unet, models.adapter.lora, strength, source=str(models.adapter_path))
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def sample_with_faceid_lora(
    engine: Engine,
    models: FaceIDModels,
    gen: GenerationParams,
    seeds: list[int],
    size: tuple[int, int],
    attention: Any,
    controls: Sequence[Any],
    progress: ProgressCallback | None,
    lora_strength: float,
) -> tuple[torch.Tensor, list[Image.Image]]:
    """FaceID's denoising pass: `sample_and_decode` with the FaceID LoRA merged into the UNet for exactly this
    pass (a FaceID image is the adapter's tokens and the LoRA together, single- or several-person alike)."""
    from idforge.engine.sampling import sample_and_decode

    lora = faceid_lora(models, lora_strength)
    return sample_and_decode(engine, models.base, gen, seeds, size, attention, controls, progress, [lora])


@torch.no_grad()
def _project(
    models: FaceIDModels, embeds: torch.Tensor, clip_embeds: torch.Tensor | None, v2_scale: float
) -> torch.Tensor:
    """(k, 512) embeddings (+ (k, 257, h) CLIP features) -> (k, T, C) tokens."""
    projection = models.projection
    device = next(projection.parameters()).device
    embeds = embeds.to(device=device, dtype=torch.float32)
    if models.adapter.kind in ("faceid-plus", "faceid-plusv2"):
        assert clip_embeds is not None, "plus models project CLIP features too (FaceIDModels.clip)"
        return projection(embeds, clip_embeds.to(device=device, dtype=torch.float32), scale=v2_scale)
    if models.adapter.kind == "faceid-portrait-unnorm":
        return projection(embeds.unsqueeze(1))
    return projection(embeds)


def prepare_faceid(
    engine: Engine, request: FaceIDRequest, models: FaceIDModels, num_images: int
) -> PreparedFaceID:
    """Face analysis, crops, CLIP features, combining (or batch unfolding) and projection."""
    from idforge.identity.clip_face import clip_face_features, crop_size_for, face_crops
    from idforge.identity.embeds import combine_faceid, concat_token_sets

    params = request.faceid
    ckpt = models.adapter
    analyzer = engine.face_analyzer(request.face_models, default="buffalo_l")
    warnings: list[str] = []
    embeddings, crops, faces_info = [], [], []
    crop_size = crop_size_for(ckpt.cross_dim)
    for index, source in enumerate(expand_face_sources(request.faces)):
        name = image_name(source, face_input(index))
        image = _load(source, name)
        try:
            face = engine.analyze_face(analyzer, image, name=name, pick=params.pick, det_size=params.det_size)
        except NoFaceError as exc:
            if not params.skip_missing:
                hint = "pass skip_missing (CLI: --skip-missing) to leave it out" if params.batch else ""
                raise NoFaceError(name, exc.sizes_tried, hint) from None
            warnings.append(f"{name}: no face found; left out")
            continue
        warnings += reference_advice(
            engine, analyzer, image, name=name, pick=params.pick, det_size=params.det_size
        )
        vector = face.embedding if ckpt.uses_raw_embedding else face.normed_embedding
        embeddings.append(torch.from_numpy(np.asarray(vector, dtype=np.float32)))
        crops.append(face_crops([np.asarray(image)], [face.kps], crop_size)[0])
        faces_info.append(
            {
                "image": name,
                "bbox": [float(v) for v in face.bbox],
                "score": float(face.score),
                "pixels_sha256": image_digest(image),
            }
        )
    if not embeddings:
        raise NoFaceError("face images", [params.det_size], "no reference image has a face")

    clip_cond = clip_uncond = None
    if models.clip is not None:
        negative = None
        if request.negative_image is not None:
            negative = _load(request.negative_image, "negative image")
        model, processor = models.clip
        clip_cond, clip_uncond = clip_face_features(model, processor, crops, negative, size=crop_size)
        clip_cond, clip_uncond = clip_cond.float(), clip_uncond.float()
    elif request.negative_image is not None:
        warnings.append(
            f"{models.adapter_path.name} ({ckpt.kind}) has no CLIP input; the negative image is ignored"
        )

    stacked = torch.stack(embeddings)
    scale = params.weight_faceidv2
    if params.batch:
        references = len(embeddings)
        count = max(num_images, references)
        if 1 < num_images < references:
            raise ParameterError(
                "num_images",
                f"{num_images} outputs for {references} batch references (need at least one each)",
            )
        cond = _project(models, stacked, clip_cond, scale)
        uncond = _project(models, torch.zeros_like(stacked), clip_uncond, scale)
        order = [min(i, references - 1) for i in range(count)]
        cond_tokens, uncond_tokens = cond[order], uncond[order]
        batch_references = order
    else:
        combined = combine_faceid(stacked, params.combine_embeds)  # (k, 512)
        clip_combined = clip_uncond_k = None
        if clip_cond is not None and clip_uncond is not None:  # both or neither
            clip_combined = combine_faceid(clip_cond, params.combine_embeds)
            clip_uncond_k = clip_uncond[:1].expand(combined.shape[0], -1, -1)
        cond_tokens = concat_token_sets(_project(models, combined, clip_combined, scale))
        uncond_tokens = concat_token_sets(_project(models, torch.zeros_like(combined), clip_uncond_k, scale))
        batch_references = None
    face_images = [Image.fromarray(crop) for crop in crops]
    return PreparedFaceID(cond_tokens, uncond_tokens, face_images, faces_info, batch_references, warnings)


def faceid_output_size(gen: GenerationParams, family: str) -> tuple[int, int]:
    if gen.width is not None and gen.height is not None:
        return gen.width, gen.height
    if gen.width is not None or gen.height is not None:
        raise ParameterError("width/height", "give both width and height, or neither")
    side = DEFAULT_SIZE.get(family, 1024)
    return side, side


def faceid_recipe(
    engine: Engine,
    request: FaceIDRequest,
    models: FaceIDModels,
    prepared: PreparedFaceID,
    layout: PassLayout,
) -> Recipe:
    """Everything needed to regenerate: parameters, seed, models with hashes, inputs, the batch layout."""
    lora = None
    if models.lora_source is not None:
        lora = {"source": models.lora_source, "strength": request.faceid.lora_strength}
        if models.lora_path is not None:
            lora["sha256"] = model_hash(models.lora_path)
    return build_recipe(
        engine,
        models.base,
        request.generation,
        method="faceid",
        layout=layout,
        params={"faceid": request.faceid},
        models={
            "ip_adapter": {"source": str(models.adapter_path), "sha256": model_hash(models.adapter_path)},
            "lora": lora,
            "clip_vision": None if models.clip_path is None else {"source": str(models.clip_path)},
            "face_models": {
                "source": str(engine.face_analyzer(request.face_models, default="buffalo_l").pack_dir)
            },
        },
        inputs={
            "faces": prepared.faces_info,
            "batch_references": prepared.batch_references,
            **recorded_images(negative_image=request.negative_image, attn_mask=request.attn_mask),
        },
        sections={"adapter_kind": models.adapter.kind},
    )
