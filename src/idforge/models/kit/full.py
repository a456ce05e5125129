"""The full kit: every network at its real architecture with random weights, in the published file layouts (fp16).

`idforge kit full --out DIR` writes what a user's models folder would hold (about 10 GB with the mid depth
ControlNet), so that the engine, CLI and server run on the real shapes from disk:

    diffusers/stable-diffusion-xl-base-1.0/    StableDiffusionXLPipeline folder (unet, vae, text encoders, ...)
    InstantX-InstantID/ControlNetModel/        IdentityNet        InstantX-InstantID/ip-adapter.bin
    controlnet/controlnet-depth-sdxl-1.0[-mid|-small]/               diffusers ControlNet folders
    ipadapter/ip-adapter-faceid_sdxl.bin       IP-Adapter FaceID SDXL (MLP, IP weights, rank-128 LoRA)
    insightface/models/..., depth/...          the tiny kit's face packs and depth estimator (not full size)

Parts build one network at a time, save it and let it go: peak memory is the largest network (the UNet, 5 GB in
fp16). The layout is the tiny kit's code path with other configs (`configs` lets the tests write it small).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from idforge.models import fullsize

from .builders import save_diffusers, save_transformers
from .common import save_bin, write_readme
from .depth import write_depth
from .faces import write_face_packs
from .pipeline import write_pipeline_files
from .sdxl import MODEL_INDEX, SCHEDULER_CONFIG

SDXL_FOLDER = "diffusers/stable-diffusion-xl-base-1.0"
IDENTITYNET_FOLDER = "InstantX-InstantID/ControlNetModel"
INSTANTID_BIN = "InstantX-InstantID/ip-adapter.bin"
DEPTH_FOLDERS = {size: f"controlnet/{name}" for size, name in fullsize.DEPTH_CONFIGS.items()}
FACEID_BIN = "ipadapter/ip-adapter-faceid_sdxl.bin"
NOTE = (
    "Full-size architecture, random weights (idforge kit full): for speed and memory only; outputs are noise."
)


def full_parts(
    configs: fullsize.FullConfigs, dtype: torch.dtype = torch.float16, depth: Sequence[str] = ("mid",)
):
    """The kit parts writing the full-size networks (each `(kit_dir, seed) -> roles`)."""
    device = torch.device("cpu")

    def write_base(kit_dir: Path, seed: int) -> dict[str, str]:
        root = kit_dir / SDXL_FOLDER
        unet = fullsize.build_unet(configs.unet, dtype, device, seed)
        save_diffusers(unet, root / "unet")
        del unet
        save_diffusers(fullsize.build_vae(configs.vae, dtype, device, seed + 1), root / "vae")
        for name, with_projection, offset in (("text_encoder", False, 2), ("text_encoder_2", True, 3)):
            model = fullsize.build_text_encoder(
                getattr(configs, name), with_projection, dtype, device, seed + offset
            )
            save_transformers(model, root / name)
            del model
        from idforge.models.singlefile import shipped_config_dir

        shipped = shipped_config_dir("sdxl")  # the published tokenizer files (CLIP BPE vocabulary, 49408)
        for name in ("tokenizer", "tokenizer_2"):
            shutil.copytree(shipped / name, root / name)
        write_pipeline_files(root, SCHEDULER_CONFIG, MODEL_INDEX, f"SDXL base pipeline folder. {NOTE}", seed)
        return {"sdxl": SDXL_FOLDER}

    def write_identitynet(kit_dir: Path, seed: int) -> dict[str, str]:
        net = fullsize.build_controlnet(configs.identitynet, dtype, device, seed + 4)
        save_diffusers(net, kit_dir / IDENTITYNET_FOLDER)
        write_readme(kit_dir / IDENTITYNET_FOLDER, f"IdentityNet (SDXL ControlNet). {NOTE}", seed)
        return {"instantid_controlnet": IDENTITYNET_FOLDER}

    def write_depth_nets(kit_dir: Path, seed: int) -> dict[str, str]:
        roles = {}
        for size in depth:
            net = fullsize.build_controlnet(configs.depth[size], dtype, device, seed + 7)
            save_diffusers(net, kit_dir / DEPTH_FOLDERS[size])
            write_readme(kit_dir / DEPTH_FOLDERS[size], f"SDXL depth ControlNet ({size}). {NOTE}", seed)
            roles["depth_controlnet" if size == depth[0] else f"depth_controlnet_{size}"] = DEPTH_FOLDERS[
                size
            ]
        return roles

    def write_adapters(kit_dir: Path, seed: int) -> dict[str, str]:
        unet = fullsize.meta_network("unet", configs)  # widths and attention order only
        save_bin(
            kit_dir / INSTANTID_BIN,
            fullsize.instantid_adapter_state(unet, configs.adapters["instantid"], dtype, seed + 5),
        )
        save_bin(
            kit_dir / FACEID_BIN,
            fullsize.faceid_sdxl_adapter_state(unet, configs.adapters["faceid_sdxl"], dtype, seed + 6),
        )
        write_readme(kit_dir / "InstantX-InstantID", f"InstantID repository layout. {NOTE}", seed)
        write_readme(kit_dir / "ipadapter", f"IP-Adapter FaceID SDXL. {NOTE}", seed)
        return {"instantid_ip_adapter": INSTANTID_BIN, "faceid_sdxl": FACEID_BIN}

    return [write_base, write_identitynet, write_depth_nets, write_adapters, write_face_packs, write_depth]


def build_full_kit(
    out: Path,
    *,
    seed: int = 0,
    force: bool = False,
    depth: Sequence[str] = ("mid",),
    dtype: torch.dtype = torch.float16,
    configs: fullsize.FullConfigs | None = None,
):
    """Write the full kit (see the module docstring); same manifest and staging as the tiny kit."""
    from . import build_kit

    for size in depth:
        if size not in fullsize.DEPTH_CONFIGS:
            from idforge.errors import ParameterError

            raise ParameterError("--depth", f"{size!r} is not one of {', '.join(fullsize.DEPTH_CONFIGS)}")
    configs = configs or fullsize.shipped_configs()
    return build_kit(Path(out), seed=seed, force=force, parts=full_parts(configs, dtype, tuple(depth)))


def free_space_ok(out: Path, needed_bytes: int) -> bool:
    target = Path(out)
    while not target.exists():
        target = target.parent
    return shutil.disk_usage(target).free > needed_bytes
