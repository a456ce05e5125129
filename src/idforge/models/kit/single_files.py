"""Kit part: the tiny pipelines as single-file checkpoints, and the FaceID SDXL LoRA as a separate file.

ComfyUI/A1111 users keep base models as one original-layout file (checkpoints/) and the FaceID LoRA as
`*_lora.safetensors` in kohya keys (loras/). This part writes both from kit files written by earlier parts, so
it must run after the SDXL, SD1.5 and FaceID parts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from idforge.identity import ldm_keys
from idforge.models.singlefile import write_single_file

CHECKPOINTS = {"tiny-sdxl": "diffusers/tiny-sdxl", "tiny-sd15": "diffusers/tiny-sd15"}
FACEID_SDXL = "ipadapter/ip-adapter-faceid_sdxl.bin"
FACEID_SDXL_LORA = "loras/ip-adapter-faceid_sdxl_lora.safetensors"
_LORA_PARTS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out_0"}


def attention_module_names(unet_config: dict) -> list[str]:
    """Attention module names of a UNet in `attn_processors` order: the N of IP-Adapter's `N.*` keys."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return [name.removesuffix(".processor") for name in unet.attn_processors]


def faceid_lora_to_kohya(
    ip_adapter: dict[str, torch.Tensor], unet_config: dict, param_names: list[str]
) -> dict[str, torch.Tensor]:
    """The LoRA embedded in a FaceID `ip_adapter` dict, in kohya/A1111 keys (`lora_unet_<ldm path>...`).

    `param_names` are the UNet's parameter names (to know which up blocks hold transformers). alpha equals the
    rank, so the LoRA's scale is 1 as in IP-Adapter's own LoRA processors.
    """
    modules = attention_module_names(unet_config)
    with_attention = ldm_keys.up_blocks_with_attention(param_names)
    out: dict[str, torch.Tensor] = {}
    for key, value in ip_adapter.items():
        m = re.match(r"(\d+)\.(to_q_lora|to_k_lora|to_v_lora|to_out_lora)\.(down|up)\.weight$", key)
        if m is None:
            continue  # the IP weights themselves (N.to_k_ip / N.to_v_ip)
        index, part, direction = m[1], m[2], m[3]
        module = ldm_keys.unet_name_to_ldm(
            modules[int(index)], unet_config["layers_per_block"], with_attention
        )
        name = "lora_unet_" + module.replace(".", "_") + "_" + _LORA_PARTS[part]
        out[f"{name}.lora_{direction}.weight"] = value.contiguous()
        if direction == "down":
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    return out


def write_single_files(kit_dir: Path, seed: int) -> dict[str, str]:
    """Write checkpoints/tiny-sdxl.safetensors, checkpoints/tiny-sd15.safetensors and the FaceID SDXL LoRA.

    Deterministic: the files are conversions of kit files, `seed` is not needed beyond theirs.
    """
    del seed
    kit_dir = Path(kit_dir)
    parts: dict[str, str] = {}
    for name, folder in CHECKPOINTS.items():
        rel = f"checkpoints/{name}.safetensors"
        write_single_file(kit_dir / folder, kit_dir / rel)
        parts[f"checkpoint_{name.removeprefix('tiny-')}"] = rel
        parts[f"single_file_configs.{name}.safetensors"] = folder  # the sidecar config of a tiny checkpoint
    unet_dir = kit_dir / CHECKPOINTS["tiny-sdxl"] / "unet"
    unet_config = json.loads((unet_dir / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(next(unet_dir.glob("*.safetensors"))), framework="pt") as f:
        param_names = list(f.keys())
    faceid = torch.load(str(kit_dir / FACEID_SDXL), map_location="cpu", weights_only=True)
    lora = faceid_lora_to_kohya(faceid["ip_adapter"], unet_config, param_names)
    (kit_dir / FACEID_SDXL_LORA).parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(lora.items())), str(kit_dir / FACEID_SDXL_LORA), metadata={"format": "pt"})
    parts["faceid_sdxl_lora"] = FACEID_SDXL_LORA
    return parts
