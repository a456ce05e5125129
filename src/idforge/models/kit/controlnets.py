"""ControlNets for the tiny SDXL UNet: IdentityNet (InstantID) and a depth ControlNet.

Both are `ControlNetModel.from_unet` configurations of the tiny SDXL UNet (cross width 128: IdentityNet
attends to the 128-wide face tokens, the depth ControlNet to the text). The layers a trained-from-scratch
ControlNet starts at zero get small random values here, so that each ControlNet visibly changes outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import ControlNetModel

from . import sdxl
from .builders import save_diffusers
from .common import part_generator, randomize_, write_readme

IDENTITYNET_FOLDER = "InstantX-InstantID/ControlNetModel"
COMFY_IDENTITYNET = "controlnet/instantid-controlnet.safetensors"
DEPTH_FOLDER = "controlnet/tiny-depth-sdxl"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

ZERO_LAYER_GAINS = {
    "controlnet_down_blocks.": 0.1,
    "controlnet_mid_block.": 0.1,
    "controlnet_cond_embedding.conv_out.": 0.1,
}


def random_controlnet(seed: int, part: str) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(
        sdxl.meta_unet(), load_weights_from_unet=False, conditioning_channels=3
    )
    randomize_(controlnet, part_generator(seed, part), ZERO_LAYER_GAINS)
    return controlnet.eval()


def write_identitynet(kit_dir: Path, seed: int) -> dict[str, str]:
    """InstantX/InstantID's ControlNetModel folder and ComfyUI's single-file copy (same diffusers keys)."""
    folder = kit_dir / IDENTITYNET_FOLDER
    save_diffusers(random_controlnet(seed, "controlnet/identitynet"), folder)
    (kit_dir / COMFY_IDENTITYNET).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / WEIGHTS_NAME, kit_dir / COMFY_IDENTITYNET)
    write_readme(
        folder, "Tiny IdentityNet (SDXL ControlNetModel; context = 16 face tokens of width 128).", seed
    )
    write_readme(
        kit_dir / "InstantX-InstantID",
        "Tiny InstantID repository layout (ControlNetModel/, ip-adapter.bin).",
        seed,
    )
    return {"instantid_controlnet": IDENTITYNET_FOLDER, "comfy_instantid_controlnet": COMFY_IDENTITYNET}


def write_depth_controlnet(kit_dir: Path, seed: int) -> dict[str, str]:
    """A depth ControlNet for the tiny SDXL (as diffusers/controlnet-depth-sdxl-1.0, 3-channel depth image)."""
    folder = kit_dir / DEPTH_FOLDER
    save_diffusers(random_controlnet(seed, "controlnet/depth"), folder)
    write_readme(
        folder, "Tiny SDXL depth ControlNet (3-channel depth image, context = text, width 128).", seed
    )
    return {"depth_controlnet": DEPTH_FOLDER}
