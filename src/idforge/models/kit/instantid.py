"""InstantID's ip-adapter.bin (Resampler + IP attention weights), where the official repo and ComfyUI keep it."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import projections, sdxl
from .common import part_generator, save_bin, save_flat_safetensors, write_readme
from .layout import attention_slots

OFFICIAL_BIN = "InstantX-InstantID/ip-adapter.bin"
COMFY_BIN = "instantid/ip-adapter.bin"
COMFY_SAFETENSORS = "instantid/ip-adapter.safetensors"
RESAMPLER_DIM = 128  # SDXL: 1280; heads = dim // 64


def instantid_state(seed: int) -> dict[str, dict]:
    """{"image_proj": Resampler state, "ip_adapter": N.to_k_ip/N.to_v_ip for the tiny SDXL UNet}."""
    g = part_generator(seed, "instantid/ip-adapter")
    image_proj = projections.resampler(
        g,
        dim=RESAMPLER_DIM,
        input_dim=projections.ID_EMBEDDING_DIM,
        output_dim=sdxl.CROSS_WIDTH,
        num_queries=16,
    )
    ip_adapter = projections.ip_attention(g, attention_slots(sdxl.meta_unet()), token_width=sdxl.CROSS_WIDTH)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_instantid_ip_adapter(kit_dir: Path, seed: int) -> dict[str, str]:
    """The .bin in the official layout and ComfyUI_InstantID's folder, plus the flat safetensors variant."""
    state = instantid_state(seed)
    save_bin(kit_dir / OFFICIAL_BIN, state)
    (kit_dir / COMFY_BIN).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kit_dir / OFFICIAL_BIN, kit_dir / COMFY_BIN)
    save_flat_safetensors(kit_dir / COMFY_SAFETENSORS, state)
    write_readme(
        kit_dir / "instantid", "Tiny InstantID ip-adapter (Resampler dim 128, 16 tokens of width 128).", seed
    )
    return {
        "instantid_ip_adapter": OFFICIAL_BIN,
        "comfy_instantid_ip_adapter": COMFY_BIN,
        "comfy_instantid_ip_adapter_safetensors": COMFY_SAFETENSORS,
    }
