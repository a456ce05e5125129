"""PuLID (ToTheBeginning/PuLID) on the shared engine loop.

Flow, as the official pipelines compute it (pulid/pipeline.py for v1, pulid/pipeline_v1_1.py for v1.1):
1. each reference is resized so its long side is at most 1024 (LANCZOS, the demos' `resize_numpy_image_long`);
   the largest face (antelopev2) gives the raw ArcFace embedding and its 5 keypoints;
2. the face is aligned to facexlib's FFHQ-512 template, parsed (BiSeNet): background, cloth, hat, ears, earring and
   neck become white, the rest grey; bicubic to EVA's size, CLIP mean/std; EVA02-CLIP-L-14-336 gives the cls
   embedding (L2-normed) and the hidden states entering blocks 4, 8, 12, 16, 20;
3. id_cond = [ArcFace raw | EVA cls normed]; the ID encoder makes the cond tokens; the uncond tokens are the
   encoder on zeros (or, with `noise`, on uniform noise as cubiq's node: our generator is seeded from the inputs);
   several references: v1.1 encodes them in one pass (id_cond (1, N, W), hidden states concatenated); v1 appends
   each auxiliary reference's first 5 tokens (all 10 with `id_mix`), cond and uncond alike (app.py);
4. every cross-attention layer gets the ID branch at every step: `out + id_scale * f(Attn(q, K_id, V_id))` with
   `fidelity` zero tokens appended to the ID tokens (their K/V are zeros) and f the projection: none, ortho or
   ortho_v2 (identity/attention.py); start/end window and attention mask as for the other methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
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
    InputName,
    ModelFormatError,
    ParameterError,
    check_choice,
    check_range,
    face_input,
)
from idforge.imageio import load_mask
from idforge.methods.body import sampler_defaults
from idforge.methods.controls import IdentityControls
from idforge.methods.pulid.body import PulidBody

if TYPE_CHECKING:
    from idforge.identity.eva_clip import EvaVisionTower
    from idforge.identity.face_parser import BiSeNet

ProgressCallback = Callable[[int, int], None]

METHOD_SETTINGS = {"fidelity": ("ortho_v2", 8), "style": ("ortho", 16), "neutral": ("none", 0)}
PROJECTIONS = ("ortho_v2", "ortho", "none")
REFERENCE_LONG_SIDE = 1024
V1_AUX_TOKENS = 5  # app.py: an auxiliary reference adds its first 5 tokens unless id_mix
NOISE_SEED_MODULUS = 1_000_000_007
# The official demos' output sizes (width, height): v1 768 x 1024, v1.1 896 x 1152.
DEFAULT_SIZE = {"v1": (768, 1024), "v1.1": (896, 1152)}
MODEL_FILES = {
    "pulid-v1.1": "pulid_v1.1.safetensors",
    "pulid-v1": "pulid_v1.bin",
    "pulid-comfyui": "ip-adapter_pulid_sdxl_fp16.safetensors",
}


@dataclass
class PulidParams(IdentityControls):
    """cubiq's ApplyPulid / ApplyPulidAdvanced controls with the official defaults."""

    PRESET_STRENGTHS = {"weight": "pulid_weight"}

    method: str = "fidelity"
    weight: float | None = None  # id_scale; None: the preset's pulid_weight, else 0.8 (the official default)
    start_at: float = 0.0
    end_at: float = 1.0
    projection: str | None = None  # None: the method's
    fidelity: int | None = None  # zero tokens; None: the method's
    noise: float = 0.0
    id_mix: bool = False
    pick: str | int = "largest"  # the official code takes the largest face
    det_size: int = 640

    def __post_init__(self) -> None:
        self.method = check_choice("method", self.method, tuple(METHOD_SETTINGS))
        if self.weight is not None:
            check_range("weight", self.weight, -1.0, 5.0)
        self.check_controls()
        if self.projection is not None:
            self.projection = check_choice("projection", self.projection, PROJECTIONS)
        if self.fidelity is not None:
            check_range("fidelity", self.fidelity, 0, 32)
            self.fidelity = int(self.fidelity)
        check_range("noise", self.noise, 0.0, 1.0)

    @property
    def projection_mode(self) -> str:
        return self.projection if self.projection is not None else METHOD_SETTINGS[self.method][0]

    @property
    def zero_tokens(self) -> int:
        return self.fidelity if self.fidelity is not None else METHOD_SETTINGS[self.method][1]

    def adapter_inputs(self) -> dict[str, Any]:
        """How its ID branch acts on the identity attention (`IdentityAttention.set_adapter_inputs`)."""
        return {
            "weight": self.weight,
            "projection": self.projection_mode,
            "zero_tokens": self.zero_tokens,
        } | (self.window())

    def recipe_extras(self) -> dict[str, Any]:
        return {"resolved_projection": self.projection_mode, "resolved_zero_tokens": self.zero_tokens}


@dataclass
class PulidRequest:
    """One PuLID call: reference faces, parameters, models (each a path, preset, file name or None)."""

    faces: Sequence[ImageInput] = ()
    generation: GenerationParams = field(default_factory=sampler_defaults(PulidBody))
    pulid: PulidParams = field(default_factory=PulidParams)
    attn_mask: ImageSource | None = None
    model: str | None = None  # default pulid-v1.1
    eva_clip: str | None = None
    face_parser: str | None = None
    base: str | None = None
    face_models: str | None = None  # default antelopev2
    persons: Sequence[Any] = ()  # several people: methods/pulid/persons.py

    def __post_init__(self) -> None:
        self.pulid = self.pulid.with_preset(self.generation.preset)  # the preset's, when not given


@dataclass
class PulidModels:
    base: BaseModel
    checkpoint: Any  # identity.pulid.PulidCheckpoint
    path: Path
    encoder: torch.nn.Module
    eva: EvaVisionTower
    eva_path: Path
    parser: BiSeNet
    parser_path: Path


@dataclass
class PreparedPulid:
    cond_tokens: torch.Tensor  # (1, T, C)
    uncond_tokens: torch.Tensor
    face_images: list[Image.Image]  # the parsed, grey face of each reference as EVA saw it (before resizing)
    faces_info: list[dict[str, Any]]
    warnings: list[str]


def decode_inputs(request: PulidRequest) -> PulidRequest:
    """Every image decoded and checked before any model loads."""
    if not request.faces:
        raise ParameterError("face_image", "at least one reference face image is needed", field="face_image")
    faces = [load_named(source, face_input(i)) for i, source in enumerate(request.faces)]
    if request.attn_mask is not None:
        load_mask(
            request.attn_mask,
            (8, 8),
            name=image_name(request.attn_mask, InputName("attn mask", "mask_image")),
        )
    return replace(request, faces=faces)


def load_pulid_models(engine: Engine, request: PulidRequest) -> PulidModels:
    """The PuLID file, base (checked to fit), ID encoder, EVA02-CLIP tower and face parser, each loaded once."""
    from idforge.identity.eva_clip import load_eva_tower
    from idforge.identity.face_parser import load_face_parser
    from idforge.identity.layers import attention_layers
    from idforge.identity.pulid import build_id_encoder, check_pulid_fits, load_pulid_checkpoint

    path = Path(engine.store.resolve("pulid", request.model or "pulid-v1.1").path)
    ckpt = engine.cached("pulid", str(path), lambda: load_pulid_checkpoint(path))
    base = engine.base_model(request.base if request.base is not None else engine.models.base)
    check_pulid_fits(ckpt, [layer for layer in attention_layers(base.unet) if layer.is_cross], base.source)
    encoder = engine.cached(
        "pulid_encoder", str(path), lambda: build_id_encoder(ckpt.encoder, ckpt.version).to(engine.device)
    )
    eva_path = Path(engine.store.resolve("eva_clip", request.eva_clip).path)
    eva = engine.cached("eva_clip", str(eva_path), lambda: load_eva_tower(eva_path).to(engine.device))
    parser_path = Path(engine.store.resolve("face_parser", request.face_parser).path)
    parser = engine.cached(
        "face_parser", str(parser_path), lambda: load_face_parser(parser_path).to(engine.device)
    )
    if eva.output_dim + 512 != encoder.id_width or eva.width != encoder.vit_width:
        raise ModelFormatError(
            f"PuLID '{path.name}' expects id_cond of {encoder.id_width} (512 + EVA output) and EVA hidden states of "
            f"{encoder.vit_width}; EVA-CLIP '{eva_path.name}' gives {eva.output_dim} and {eva.width}"
        )
    return PulidModels(base, ckpt, path, encoder, eva, eva_path, parser, parser_path)


def resize_long_side(image: Image.Image, long_side: int = REFERENCE_LONG_SIDE) -> np.ndarray:
    """RGB array with its long side at most `long_side` (cv2 LANCZOS4, as the demos' resize_numpy_image_long)."""
    array = np.asarray(image.convert("RGB"))
    h, w = array.shape[:2]
    if max(h, w) <= long_side:
        return array
    k = long_side / max(h, w)
    return cv2.resize(array, (int(w * k), int(h * k)), interpolation=cv2.INTER_LANCZOS4)


@torch.no_grad()
def eva_features(
    models: PulidModels, aligned_rgb: np.ndarray
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(normed cls (1, out), hidden states, the parsed grey face (1, 3, 512, 512) in [0, 1]) of an aligned crop."""
    from idforge.identity.eva_clip import eva_preprocess
    from idforge.identity.face_parser import face_features_image

    device = next(models.eva.parameters()).device
    crop = (
        torch.from_numpy(np.ascontiguousarray(aligned_rgb))
        .permute(2, 0, 1)[None]
        .float()
        .div(255.0)
        .to(device)
    )
    features = face_features_image(models.parser, crop)
    cls, hidden = models.eva(eva_preprocess(features, models.eva.image_size))
    cls = cls / cls.norm(p=2, dim=1, keepdim=True)
    return cls, hidden, features


def noise_like(shape: Sequence[int], amount: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=generator) * amount


@torch.no_grad()
def encode_tokens(
    models: PulidModels, id_conds: list[torch.Tensor], hiddens: list[list[torch.Tensor]], params: PulidParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cond and uncond ID tokens (1, T, C) of the references (see the module docstring, step 3)."""
    encoder = models.encoder
    device = next(encoder.parameters()).device
    seed = int(sum(float(c.sum()) for c in id_conds)) % NOISE_SEED_MODULUS

    def negative(cond: torch.Tensor, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if params.noise == 0.0:
            return torch.zeros_like(cond), [torch.zeros_like(h) for h in hidden]
        parts = [noise_like(cond.shape, params.noise, seed)]
        parts += [noise_like(h.shape, params.noise, seed + 1 + i) for i, h in enumerate(hidden)]
        return parts[0].to(device), [p.to(device) for p in parts[1:]]

    if models.checkpoint.version == "v1.1":
        cond_in = torch.stack(id_conds, dim=1)  # (1, N, W)
        hidden_in = [torch.cat([h[j] for h in hiddens], dim=1) for j in range(len(hiddens[0]))]
        cond = encoder(cond_in, hidden_in)
        neg_cond, neg_hidden = negative(id_conds[0], hiddens[0])
        return cond, encoder(neg_cond, neg_hidden)
    conds, unconds = [], []
    for i, (id_cond, hidden) in enumerate(zip(id_conds, hiddens, strict=True)):
        cond = encoder(id_cond, hidden)
        neg_cond, neg_hidden = negative(id_cond, hidden)
        uncond = encoder(neg_cond, neg_hidden)
        if i > 0 and not params.id_mix:
            cond, uncond = cond[:, :V1_AUX_TOKENS], uncond[:, :V1_AUX_TOKENS]
        conds.append(cond)
        unconds.append(uncond)
    return torch.cat(conds, dim=1), torch.cat(unconds, dim=1)


def prepare_pulid(engine: Engine, request: PulidRequest, models: PulidModels) -> PreparedPulid:
    """Face analysis, alignment, parsing, EVA02-CLIP and the ID encoder for every reference."""
    from idforge.faces.align import ffhq_crop

    params = request.pulid
    analyzer = engine.face_analyzer(request.face_models, default="antelopev2")
    id_conds, hiddens, face_images, faces_info, warnings = [], [], [], [], []
    device = next(models.encoder.parameters()).device
    for index, source in enumerate(request.faces):
        name = image_name(source, face_input(index))
        image = load_named(source, name).image
        resized = Image.fromarray(resize_long_side(image))
        face = engine.analyze_face(analyzer, resized, name=name, pick=params.pick, det_size=params.det_size)
        warnings += reference_advice(
            engine, analyzer, resized, name=name, pick=params.pick, det_size=params.det_size
        )
        aligned = ffhq_crop(np.asarray(resized), face.kps, 512)
        cls, hidden, features = eva_features(models, aligned)
        embedding = torch.from_numpy(np.asarray(face.embedding, dtype=np.float32))[None].to(device)
        id_conds.append(torch.cat([embedding, cls.float()], dim=-1))
        hiddens.append([h.float() for h in hidden])
        face_images.append(
            Image.fromarray((features[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        )
        faces_info.append(
            {
                "image": name,
                "bbox": [float(v) for v in face.bbox],
                "score": float(face.score),
                "pixels_sha256": image_digest(image),
            }
        )
    cond, uncond = encode_tokens(models, id_conds, hiddens, params)
    return PreparedPulid(cond, uncond, face_images, faces_info, warnings)


def pulid_output_size(gen: GenerationParams, version: str) -> tuple[int, int]:
    if gen.width is not None and gen.height is not None:
        return gen.width, gen.height
    if gen.width is not None or gen.height is not None:
        raise ParameterError("width/height", "give both width and height, or neither")
    return DEFAULT_SIZE[version]


def pulid_model_entries(engine: Engine, request: PulidRequest, models: PulidModels) -> dict[str, Any]:
    return {
        "pulid": {
            "source": str(models.path),
            "sha256": model_hash(models.path),
            "version": models.checkpoint.version,
            "layout": models.checkpoint.layout,
        },
        "eva_clip": {"source": str(models.eva_path), "sha256": model_hash(models.eva_path)},
        "face_parser": {"source": str(models.parser_path), "sha256": model_hash(models.parser_path)},
        "face_models": {
            "source": str(engine.face_analyzer(request.face_models, default="antelopev2").pack_dir)
        },
    }


def pulid_recipe(
    engine: Engine,
    request: PulidRequest,
    models: PulidModels,
    prepared: PreparedPulid,
    layout: PassLayout,
) -> Recipe:
    return build_recipe(
        engine,
        models.base,
        request.generation,
        method="pulid",
        layout=layout,
        params={"pulid": request.pulid},
        models=pulid_model_entries(engine, request, models),
        inputs={
            "faces": prepared.faces_info,
            **recorded_images(attn_mask=request.attn_mask),
        },
        sections={"pulid_version": models.checkpoint.version, "pulid_layout": models.checkpoint.layout},
    )
