"""Kit part: the few-step LoRAs and UNets under their published file names, in the layouts such files use.

- LoRAs in `loras/`, rank 4 on every attention projection (to_q, to_k, to_v, to_out.0) of the tiny SDXL UNet, in
  three key layouts so that each reader path is exercised: LCM-LoRA in diffusers/PEFT keys
  (`unet.<module>.lora_A.weight` / `lora_B`), SDXL-Lightning in kohya keys with diffusers module names
  (`lora_unet_down_blocks_1_..._to_q.lora_down.weight` + `.alpha`), Hyper-SD in kohya keys with the original
  (LDM) names (`lora_unet_input_blocks_4_1_..._to_q`), as ComfyUI/A1111 LoRAs usually are;
- UNets in `unet/` (ComfyUI's folder): `sdxl_lightning_4step_unet.safetensors` and
  `sdxl_lightning_1step_unet_x0.safetensors`, full diffusers-key state dicts in float16 as published (the other
  N-step UNet files follow the same path and are left out to keep the kit small).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from idforge.identity import ldm_keys

from . import sdxl
from .builders import random_diffusers_model
from .common import part_generator, write_readme

LORA_RANK = 4
PEFT_FILES = ("lcm-lora-sdxl.safetensors",)
KOHYA_DIFFUSERS_FILES = tuple(f"sdxl_lightning_{n}step_lora.safetensors" for n in (2, 4, 8))
KOHYA_LDM_FILES = (
    "Hyper-SDXL-1step-lora.safetensors",
    "Hyper-SDXL-2steps-lora.safetensors",
    "Hyper-SDXL-4steps-lora.safetensors",
    "Hyper-SDXL-8steps-lora.safetensors",
    "Hyper-SDXL-8steps-CFG-lora.safetensors",
    "Hyper-SDXL-12steps-CFG-lora.safetensors",
)
UNET_FILES = ("sdxl_lightning_4step_unet.safetensors", "sdxl_lightning_1step_unet_x0.safetensors")


def attention_projections() -> dict[str, tuple[int, int]]:
    """{module name: (out, in)} of every attention projection of the tiny SDXL UNet."""
    unet = sdxl.meta_unet()
    return {
        name: (module.out_features, module.in_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
        and ".attn" in name
    }


def lora_pairs(seed: int, file: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (down (r, in), up (out, r))}: random, and large enough to change outputs visibly."""
    g = part_generator(seed, f"fewstep/{file}")
    pairs = {}
    for name, (out_features, in_features) in sorted(attention_projections().items()):
        down = torch.randn((LORA_RANK, in_features), generator=g) / in_features**0.5
        up = torch.randn((out_features, LORA_RANK), generator=g) * 0.2
        pairs[name] = (down, up)
    return pairs


def peft_keys(pairs) -> dict[str, torch.Tensor]:
    out = {}
    for name, (down, up) in pairs.items():
        out[f"unet.{name}.lora_A.weight"] = down
        out[f"unet.{name}.lora_B.weight"] = up
    return out


def kohya_keys(pairs, ldm_names: bool) -> dict[str, torch.Tensor]:
    config = sdxl.unet_config()
    names = [name for name, _ in sdxl.meta_unet().named_parameters()]
    with_attention = ldm_keys.up_blocks_with_attention(names)
    out = {}
    for name, (down, up) in pairs.items():
        module = (
            ldm_keys.unet_name_to_ldm(name, config["layers_per_block"], with_attention) if ldm_names else name
        )
        stem = "lora_unet_" + module.replace(".", "_")
        out[f"{stem}.lora_down.weight"] = down
        out[f"{stem}.lora_up.weight"] = up
        out[f"{stem}.alpha"] = torch.tensor(float(LORA_RANK))
    return out


def write_fewstep(kit_dir: Path, seed: int) -> dict[str, str]:
    """The few-step LoRAs into KIT/loras/ and the Lightning UNets into KIT/unet/."""
    parts: dict[str, str] = {}
    for file in (*PEFT_FILES, *KOHYA_DIFFUSERS_FILES, *KOHYA_LDM_FILES):
        pairs = lora_pairs(seed, file)
        if file in PEFT_FILES:
            state = peft_keys(pairs)
        else:
            state = kohya_keys(pairs, ldm_names=file in KOHYA_LDM_FILES)
        rel = f"loras/{file}"
        (kit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sorted(state.items())}, str(kit_dir / rel))
        parts[f"fewstep_lora.{file}"] = rel
    for file in UNET_FILES:
        unet = random_diffusers_model(UNet2DConditionModel, sdxl.unet_config(), seed, f"fewstep/{file}")
        state = {k: v.to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
        rel = f"unet/{file}"
        (kit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(kit_dir / rel))
        parts[f"fewstep_unet.{file}"] = rel
    write_readme(kit_dir / "unet", "Tiny SDXL-Lightning UNets (diffusers keys, float16).", seed)
    return parts
