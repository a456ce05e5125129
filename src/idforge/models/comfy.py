"""Local models folders in the ComfyUI layout: which folders to search and what in them can serve a role.

A models folder is searched as ComfyUI arranges `models/` (checkpoints/, diffusers/, controlnet/, instantid/,
ipadapter/, clip_vision/, loras/, insightface/models/<pack>/, plus depth/ for depth estimators). The user may
name the ComfyUI root instead (the folder above models/), or list folders in IDFORGE_MODELS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from idforge.models.presets import COMFY_FOLDERS

ENV_VAR = "IDFORGE_MODELS"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# What a role accepts in its folders: single files with these suffixes, and/or folders holding this marker file.
_ROLE_FILES: dict[str, tuple[str, ...]] = {
    "base": (".safetensors", ".ckpt"),
    "identitynet": (".safetensors", ".bin"),
    "ipadapter": (".bin", ".safetensors"),
    "lora": (".safetensors",),
    "clip_vision": (".safetensors", ".bin"),
    "controlnet": (".safetensors", ".bin"),
    "depth_estimator": (),
    "instantid": (),
    "face_pack": (),
    "unet": (".safetensors",),
    "pulid": (".bin", ".safetensors"),
    "eva_clip": (".pt", ".safetensors", ".bin"),
    "face_parser": (".pth", ".safetensors"),
}
_ROLE_FOLDER_MARKER: dict[str, str | None] = {
    "base": "model_index.json",
    "identitynet": "config.json",
    "ipadapter": None,
    "lora": None,
    "clip_vision": "config.json",
    "controlnet": "config.json",
    "depth_estimator": "config.json",
    "instantid": "ControlNetModel",
    "face_pack": None,
    "unet": None,
    "pulid": None,
    "eva_clip": None,
    "face_parser": None,
}


def _is_models_dir(path: Path) -> bool:
    return any(
        (path / folder.split("/")[0]).is_dir() for folders in COMFY_FOLDERS.values() for folder in folders
    )


def expand_models_dirs(models_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The folders to search, in order: those given, then IDFORGE_MODELS (os.pathsep-separated).

    A ComfyUI root (a folder with models/ inside and no model folders of its own) stands for its models/.
    Missing folders are kept: errors list them among the places looked in.
    """
    raw: list[str | Path] = list(models_dirs)
    raw += [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for item in raw:
        path = Path(item).expanduser()
        if (path / "models").is_dir() and not _is_models_dir(path):
            path = path / "models"
        if path not in out:
            out.append(path)
    return out


def role_folders(models_dir: Path, role: str) -> list[Path]:
    """The ComfyUI folders of `models_dir` that may hold a model for `role`."""
    return [models_dir / folder for folder in COMFY_FOLDERS[role]]


def candidates(folder: Path, role: str) -> list[Path]:
    """Entries of `folder` that could be a model for `role` (sorted by name)."""
    if not folder.is_dir():
        return []
    suffixes = _ROLE_FILES[role]
    marker = _ROLE_FOLDER_MARKER[role]
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in suffixes:
            found.append(entry)
        elif entry.is_dir() and marker and (entry / marker).exists():
            found.append(entry)
    return found


def pipeline_family(path: Path) -> str | None:
    """'sdxl' / 'sd15' for a base-model candidate (diffusers folder or single file), None if unknown."""
    from idforge.errors import IdforgeError
    from idforge.models.singlefile import detect_family, read_keys

    if path.is_dir():
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (OSError, ValueError):
            return None
        return "sdxl" if "text_encoder_2" in index else "sd15"
    if path.suffix != ".safetensors":
        return None  # reading a pickle just to look is too slow; treat as unknown
    try:
        return detect_family(read_keys(path), name=str(path))
    except IdforgeError:
        return None
