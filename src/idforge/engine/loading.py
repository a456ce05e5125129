"""Loading resolved model files into torch modules (the store finds files; this turns them into models)."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import ControlNetModel, DiffusionPipeline

from idforge.engine.base import BaseModel, base_family
from idforge.errors import ModelFormatError

# Loading from local disk takes seconds; per-component bars from diffusers/transformers are noise on the CLI.
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed `torch_dtype` to `dtype` in 0.42; use whichever the installed version takes."""
    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def load_base_model(
    path: str | Path, dtype: torch.dtype, device: torch.device, source: str | None = None
) -> BaseModel:
    """A diffusers folder or a single-file checkpoint, as an SDXL or SD1.5 pipeline on `device`."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFormatError(
                f"base model {path}: folder has no model_index.json (not a diffusers pipeline folder)"
            )
        pipe = DiffusionPipeline.from_pretrained(path, **dtype_kwarg(dtype), local_files_only=True)
    else:
        from idforge.models.singlefile import load_single_file_pipeline

        pipe = load_single_file_pipeline(path, torch_dtype=dtype)
    family = base_family(pipe)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return BaseModel(pipe=pipe, family=family, source=source or str(path))


def load_controlnet(
    path: str | Path, dtype: torch.dtype, device: torch.device, base_unet_config: dict | None = None
) -> ControlNetModel:
    """A ControlNet from a diffusers folder or a lone safetensors file (ComfyUI's habit)."""
    path = Path(path)
    if path.is_dir():
        model = ControlNetModel.from_pretrained(path, **dtype_kwarg(dtype), local_files_only=True)
    else:
        from idforge.models.singlefile import load_controlnet_file

        model = load_controlnet_file(path, base_unet_config=base_unet_config, torch_dtype=dtype)
    return model.to(device).eval()


def check_controlnet_fits(controlnet: ControlNetModel, base: BaseModel, name: str) -> None:
    """Refuse a ControlNet built for another base family before any generation starts."""
    # diffusers types `config` as a dict (a FrozenDict, which also allows attribute access): read it as one.
    unet_config = base.unet.config
    cn_config = controlnet.config
    mismatches = []
    cn_channels = tuple(cn_config["block_out_channels"])
    unet_channels = tuple(unet_config["block_out_channels"])
    if cn_channels != unet_channels[: len(cn_channels)]:
        mismatches.append(f"channels {cn_channels} vs {unet_channels}")
    cn_embed, unet_embed = cn_config["addition_embed_type"], unet_config["addition_embed_type"]
    if cn_embed != unet_embed:
        mismatches.append(f"addition_embed_type {cn_embed} vs {unet_embed}")
    if mismatches:
        raise ModelFormatError(
            f"{name}: ControlNet does not fit the base model {base.source} ({base.family}): "
            + "; ".join(mismatches)
        )
