"""IP-Adapter FaceID checkpoints (h94/IP-Adapter-FaceID file names) for the tiny SDXL and SD1.5 UNets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import clip_vision, projections, sd15, sdxl
from .common import part_generator, save_bin, write_readme
from .layout import attention_slots

FOLDER = "ipadapter"
LORA_RANK = 4  # published: 128


@dataclass(frozen=True)
class FaceIDVariant:
    file: str
    base: str  # "sdxl" | "sd15"
    projection: str  # "mlp" | "plus" | "resampler"
    tokens: int
    lora: bool


VARIANTS: tuple[FaceIDVariant, ...] = (
    FaceIDVariant("ip-adapter-faceid_sdxl.bin", "sdxl", "mlp", 4, True),
    FaceIDVariant("ip-adapter-faceid-plusv2_sdxl.bin", "sdxl", "plus", 4, True),
    FaceIDVariant("ip-adapter-faceid-portrait_sdxl.bin", "sdxl", "mlp", 16, False),
    FaceIDVariant("ip-adapter-faceid-portrait_sdxl_unnorm.bin", "sdxl", "resampler", 16, False),
    FaceIDVariant("ip-adapter-faceid_sd15.bin", "sd15", "mlp", 4, True),
    FaceIDVariant("ip-adapter-faceid-plus_sd15.bin", "sd15", "plus", 4, True),
    FaceIDVariant("ip-adapter-faceid-plusv2_sd15.bin", "sd15", "plus", 4, True),
    FaceIDVariant("ip-adapter-faceid-portrait-v11_sd15.bin", "sd15", "mlp", 16, False),
)


def faceid_state(variant: FaceIDVariant, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": ..., "ip_adapter": ...} for one variant, widths taken from the tiny UNet it targets."""
    g = part_generator(seed, f"faceid/{variant.file}")
    unet = sdxl.meta_unet() if variant.base == "sdxl" else sd15.meta_unet()
    width = unet.config.cross_attention_dim
    if variant.projection == "mlp":
        image_proj = projections.faceid_mlp(g, width, variant.tokens)
    elif variant.projection == "plus":
        image_proj = projections.faceid_plus(g, width, variant.tokens, clip_vision.HIDDEN)
    else:  # InstantID-style Resampler on the raw embedding
        image_proj = projections.resampler(
            g, dim=width, input_dim=projections.ID_EMBEDDING_DIM, output_dim=width, num_queries=variant.tokens
        )
    rank = LORA_RANK if variant.lora else None
    ip_adapter = projections.ip_attention(g, attention_slots(unet), token_width=width, lora_rank=rank)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def role(variant: FaceIDVariant) -> str:
    """Manifest role: the file name without prefix and extension, e.g. "faceid_plusv2_sdxl"."""
    return variant.file.removeprefix("ip-adapter-").removesuffix(".bin").replace("-", "_")


def write_faceid(kit_dir: Path, seed: int) -> dict[str, str]:
    """All FaceID variants into KIT/ipadapter/ (ComfyUI_IPAdapter_plus's folder)."""
    written = {}
    for variant in VARIANTS:
        rel = f"{FOLDER}/{variant.file}"
        save_bin(kit_dir / rel, faceid_state(variant, seed))
        written[role(variant)] = rel
    write_readme(
        kit_dir / FOLDER,
        "Tiny IP-Adapter FaceID checkpoints (LoRA rank 4, SDXL width 128, SD1.5 width 64).",
        seed,
    )
    return written
