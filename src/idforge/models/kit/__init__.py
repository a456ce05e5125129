"""The tiny model kit: random, deterministic, tiny models in the real on-disk formats and key layouts.

`build_kit(out, seed)` runs a flat list of parts; each part is a function `(kit_dir: Path, seed: int)` that
writes its files under `kit_dir` (using only paths relative to it) and may return {role: relative path} for
the manifest `kit.json`. Adding a model to the kit is one more entry in `PARTS`.

The kit is built in a temporary sibling folder and moved into place at the end, so a failed build never
leaves a half-written kit, and an existing folder is replaced only if it is a kit and `force` is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from idforge import __version__
from idforge.errors import ModelFormatError, ParameterError

from .clip_vision import write_clip_vision
from .common import README_NAME, write_json, write_readme
from .controlnets import write_depth_controlnet, write_identitynet
from .depth import write_depth
from .faceid import write_faceid
from .faces import write_face_packs
from .fewstep import write_fewstep
from .instantid import write_instantid_ip_adapter
from .pulid import write_pulid
from .sd15 import write_sd15
from .sdxl import write_sdxl
from .single_files import write_single_files

MANIFEST_NAME = "kit.json"
MANIFEST_FORMAT = 1
DEFAULT_SEED = 0

KitPart = Callable[[Path, int], Mapping[str, str] | None]

PARTS: list[KitPart] = [
    write_sdxl,
    write_sd15,
    write_identitynet,
    write_depth_controlnet,
    write_instantid_ip_adapter,
    write_faceid,
    write_clip_vision,
    write_depth,
    write_face_packs,
    write_single_files,
    write_fewstep,
    write_pulid,
]


@dataclass
class KitResult:
    """What `build_kit` wrote."""

    path: Path
    seed: int
    parts: dict[str, str]  # role -> path relative to `path`
    files: list[str] = field(default_factory=list)  # every file, relative, sorted
    total_bytes: int = 0
    seconds: float = 0.0


def is_kit(path: Path) -> bool:
    """True if `path` is a folder holding a kit manifest."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(path: Path) -> dict:
    """The kit's manifest {"format", "seed", "idforge_version", "parts"}."""
    manifest_path = Path(path) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: not an idforge kit (no {MANIFEST_NAME})") from None
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{manifest_path}: not valid JSON ({exc.msg})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFormatError(f"{manifest_path}: unsupported kit format {manifest.get('format')!r}")
    return manifest


def kit_path(kit_dir: Path, role: str) -> Path:
    """Absolute path of a role listed in the kit's manifest."""
    parts = read_manifest(kit_dir)["parts"]
    if role not in parts:
        raise ModelFormatError(f"{kit_dir}: the kit has no part '{role}' (has: {', '.join(sorted(parts))})")
    return Path(kit_dir) / parts[role]


def file_hashes(kit_dir: Path) -> dict[str, str]:
    """sha256 of every file in the kit, by relative path: same seed, same hashes."""
    root = Path(kit_dir)
    hashes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hashes[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ParameterError("--out", f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_kit(out):
        raise ParameterError("--out", f"{out} is not empty and not an idforge kit; refusing to overwrite it")
    if not force:
        raise ParameterError("--out", f"{out} already holds a kit; pass --force to rebuild it")


def _readme_sweep(kit_dir: Path, seed: int) -> None:
    """Give every folder that has none a README saying it is part of a random tiny kit."""
    folders = [kit_dir, *sorted(p for p in kit_dir.rglob("*") if p.is_dir())]
    for folder in folders:
        if not (folder / README_NAME).exists():
            rel = folder.relative_to(kit_dir).as_posix()
            write_readme(folder, f"Folder `{rel}` of the idforge tiny model kit.", seed)


def _normalise_modes(kit_dir: Path) -> None:
    """safetensors writes files readable by their owner only; a kit is meant to be shared (containers, CI)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in kit_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def build_kit(
    out: Path, seed: int = DEFAULT_SEED, force: bool = False, parts: Sequence[KitPart] | None = None
) -> KitResult:
    """Write the tiny kit to `out` (see the kit layout in the project docs) and return what was written."""
    out = Path(out)
    _check_destination(out, force)
    if seed < 0:
        raise ParameterError("--seed", f"{seed} is negative")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    roles: dict[str, str] = {}
    try:
        for part in PARTS if parts is None else parts:
            written = part(staging, seed)
            roles.update(written or {})
        _readme_sweep(staging, seed)
        _normalise_modes(staging)
        manifest = {"format": MANIFEST_FORMAT, "seed": seed, "idforge_version": __version__, "parts": roles}
        write_json(staging / MANIFEST_NAME, manifest)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return KitResult(
        path=out,
        seed=seed,
        parts=roles,
        files=[p.relative_to(out).as_posix() for p in files],
        total_bytes=sum(p.stat().st_size for p in files),
        seconds=time.perf_counter() - started,
    )


__all__ = [
    "DEFAULT_SEED",
    "MANIFEST_NAME",
    "PARTS",
    "KitPart",
    "KitResult",
    "build_kit",
    "file_hashes",
    "is_kit",
    "kit_path",
    "read_manifest",
]
