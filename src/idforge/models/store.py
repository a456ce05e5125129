"""The model store: one place that finds every model a job needs, offline first.

Search order for a role: an explicit path; each models folder (ComfyUI layout, see `comfy`); for face packs
`~/.insightface/models/<pack>`; the Hugging Face cache (no network); then a download, unless offline. Failure
is one ModelNotFoundError naming the model, every place looked in, and where to put it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from idforge.errors import ModelFormatError, ModelNotFoundError, ParameterError, check_choice
from idforge.models import comfy, hub
from idforge.models.presets import DEFAULTS, INSIGHTFACE_NOTE, PRESETS, ROLES, Preset, find_preset

SOURCES = ("path", "models_dir", "comfyui", "insightface_home", "hf_cache", "hub_download")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk. `parts` names the pieces of a composite model (InstantID: identitynet, ipadapter)."""

    role: str
    path: Path
    source: str
    preset: str | None = None
    repo_id: str | None = None
    parts: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        origin = f" [{self.preset}]" if self.preset else ""
        return f"{self.role}: {self.path} ({self.source}){origin}"


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", ".", "~", "\\"))
        or "\\" in spec
        or Path(spec).suffix.lower() in comfy.WEIGHT_SUFFIXES
    )


class ModelStore:
    """Resolves models for roles (see presets.ROLES) from local folders, the hub cache and the hub."""

    def __init__(
        self,
        models_dirs: Sequence[str | Path] = (),
        *,
        offline: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.models_dirs = comfy.expand_models_dirs(models_dirs)
        self.offline = hub.offline_mode(offline)
        self.cache_dir = hub.hub_cache_dir(cache_dir)

    # ---- entry points -------------------------------------------------------------------------------------
    def default(self, role: str, preset_name: str, *, local_only: bool = False) -> ResolvedModel:
        """The model a job uses when the user named none: the preset's files where users keep them, else the one
        model of that family in the models folders (a tiny kit, a ComfyUI folder), else the hub."""
        return self._preset(role, PRESETS[preset_name], local_only, pick_single=True)

    # ---- resolution ---------------------------------------------------------------------------------------
    def resolve(
        self, role: str, spec: str | Path | None = None, *, local_only: bool = False
    ) -> ResolvedModel:
        """Find the model for `role` named by `spec` (a path, preset name, file name or hub repo id, or None
        for the role's default). `local_only` never downloads (used by `idforge models list`)."""
        check_choice("role", role, ROLES)
        if role == "face_pack":
            name = str(spec) if spec is not None else DEFAULTS["face_pack"]
            path, source = _find_face_pack(name, self.models_dirs, explicit=spec is not None)
            return _named_model(role, path, source)
        if role == "instantid":
            return self._instantid(spec, local_only)
        if spec is None:
            if role not in DEFAULTS:
                raise ParameterError(role, "no default model for this role: name a file, folder or preset")
            return self._preset(role, PRESETS[DEFAULTS[role]], local_only, pick_single=True)

        text = str(spec)
        path = Path(text).expanduser()
        if path.exists():
            return _named_model(role, path.resolve(), "path", name=path.name)
        if isinstance(spec, Path) or _looks_like_path(text):
            local = self._named_in_models_dirs(role, path.name) if not path.is_absolute() else None
            if local:
                return local
            raise ModelNotFoundError(
                text,
                [str(path), *self._folders_text(role)],
                hint="the path does not exist; give an existing file or folder",
            )
        preset = find_preset(text)
        if preset is not None and (
            preset.role == role or (role == "controlnet" and preset.role == "identitynet")
        ):
            return self._preset(role, preset, local_only)
        local = self._named_in_models_dirs(role, text)
        if local:
            return local
        if _REPO_ID.match(text):
            return self._repo(role, text, local_only)
        raise ModelNotFoundError(
            text,
            self._folders_text(role),
            hint=f"not a file, a preset or a hub id; presets for {role}: {', '.join(_presets_for(role)) or 'none'}",
        )

    def fetch(self, name: str, *, into_models_dir: bool = False) -> ResolvedModel:
        """Download preset `name` into the hub cache, or into the first models folder's ComfyUI layout."""
        preset = find_preset(name)
        if preset is None:
            raise ModelNotFoundError(
                name, ["idforge presets"], hint=f"known presets: {', '.join(sorted(PRESETS))}"
            )
        if preset.repo_id is None:
            raise ModelNotFoundError(preset.name, ["the hub"], hint=INSIGHTFACE_NOTE.format(name=preset.name))
        if not into_models_dir:
            root = hub.download(
                preset.repo_id, preset.files, what=preset.name, cache_dir=self.cache_dir, offline=self.offline
            )
            return ResolvedModel(
                preset.role, _preset_path(root, preset), "hub_download", preset.name, preset.repo_id
            )
        if not self.models_dirs:
            raise ParameterError("--models", "fetching into a models folder needs --models DIR")
        target = _fetch_target(self.models_dirs[0], preset)
        staging = target.parent / f".idforge-fetch-{preset.name}"
        root = hub.download(
            preset.repo_id,
            preset.files,
            what=preset.name,
            cache_dir=self.cache_dir,
            local_dir=staging,
            offline=self.offline,
        )
        source = _preset_path(root, preset)
        if preset.role != "instantid" and target.exists():
            _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if preset.role == "instantid":
            for item in source.iterdir():
                if not item.name.startswith("."):
                    dest = target / item.name
                    if dest.exists():
                        _remove(dest)
                    shutil.move(str(item), str(dest))
        else:
            shutil.move(str(source), str(target))
        shutil.rmtree(staging, ignore_errors=True)
        return ResolvedModel(preset.role, target, "comfyui", preset.name, preset.repo_id)

    # ---- helpers ------------------------------------------------------------------------------------------
    def _folders(self, role: str) -> list[Path]:
        return [folder for d in self.models_dirs for folder in comfy.role_folders(d, role)]

    def _folders_text(self, role: str) -> list[str]:
        return [str(f) for f in self._folders(role)] or [
            "no models folder (use --models DIR or IDFORGE_MODELS)"
        ]

    def _named_in_models_dirs(self, role: str, name: str) -> ResolvedModel | None:
        """A model the user named by its file or folder name (with or without suffix) in a role folder."""
        for folder in self._folders(role):
            for entry in comfy.candidates(folder, role):
                if name in (entry.name, entry.stem):
                    return _named_model(role, entry, "comfyui")
        return None

    def _preset(
        self, role: str, preset: Preset, local_only: bool, pick_single: bool = False
    ) -> ResolvedModel:
        looked: list[str] = []
        for d in self.models_dirs:
            for name in (preset.name, *preset.comfy_names):
                if (d / name).exists():
                    return ResolvedModel(role, d / name, "models_dir", preset.name, preset.repo_id)
            for folder in comfy.role_folders(d, role):
                looked.append(str(folder))
                for name in preset.comfy_names:
                    if (folder / name).exists():
                        return ResolvedModel(role, folder / name, "comfyui", preset.name, preset.repo_id)
        if pick_single:
            picked = self._single_candidate(role, preset)
            if picked is not None:
                return picked
        if preset.repo_id:
            snapshot = hub.cached_files(preset.repo_id, preset.files, self.cache_dir)
            looked.append(f"hub cache {self.cache_dir} ({preset.repo_id})")
            if snapshot is not None:
                return ResolvedModel(
                    role, _preset_path(snapshot, preset), "hf_cache", preset.name, preset.repo_id
                )
            if not local_only and not self.offline:
                root = hub.download(preset.repo_id, preset.files, what=preset.name, cache_dir=self.cache_dir)
                return ResolvedModel(
                    role, _preset_path(root, preset), "hub_download", preset.name, preset.repo_id
                )
        where = (
            comfy.role_folders(self.models_dirs[0], role)[0]
            if self.models_dirs
            else Path("<models>") / (comfy.COMFY_FOLDERS[role][0])
        )
        hint = f"put {preset.comfy_names[0]} in {where}"
        if preset.repo_id:
            hint += f" or run `idforge models fetch {preset.name}`"
            if self.offline:
                hint += " (offline now: HF_HUB_OFFLINE or --offline)"
        raise ModelNotFoundError(preset.name, looked or self._folders_text(role), hint=hint)

    def _single_candidate(self, role: str, preset: Preset) -> ResolvedModel | None:
        """With no name given: the one model in the role folders that fits, or an error listing several."""
        others = {
            n.lower() for p in PRESETS.values() if p.name != preset.name for n in (p.name, *p.comfy_names)
        }
        found = []
        for folder in self._folders(role):
            for entry in comfy.candidates(folder, role):
                if entry.name.lower() in others:
                    continue
                if (
                    role == "base"
                    and preset.family
                    and comfy.pipeline_family(entry) not in (preset.family, None)
                ):
                    continue
                found.append(entry)
        found = _prefer_folders_over_twins(found)
        if len(found) == 1:
            return ResolvedModel(role, found[0], "comfyui", None, None)
        if len(found) > 1:
            listed = ", ".join(str(p) for p in found)
            raise ParameterError(role, f"several candidates, name one (file name or path): {listed}")
        return None

    def _repo(self, role: str, repo_id: str, local_only: bool) -> ResolvedModel:
        """An arbitrary hub repo named by id: a whole diffusers/transformers folder (weights as safetensors)."""
        from huggingface_hub import snapshot_download

        looked = [f"hub cache {self.cache_dir} ({repo_id})"]
        try:
            folder = snapshot_download(repo_id, cache_dir=str(self.cache_dir), local_files_only=True)
            return ResolvedModel(role, Path(folder), "hf_cache", None, repo_id)
        except Exception:  # noqa: BLE001 - any cache miss means "not cached"
            pass
        if local_only or self.offline:
            raise ModelNotFoundError(
                repo_id,
                self._folders_text(role) + looked,
                hint="not cached and offline; download it where the hub is reachable",
            )
        patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
        from huggingface_hub.errors import HfHubHTTPError

        try:
            folder = snapshot_download(repo_id, cache_dir=str(self.cache_dir), allow_patterns=patterns)
        except (HfHubHTTPError, OSError) as exc:
            raise ModelNotFoundError(
                repo_id, looked, hint=f"download failed ({type(exc).__name__}: {exc})"
            ) from exc
        return ResolvedModel(role, Path(folder), "hub_download", None, repo_id)

    def _instantid(self, spec: str | Path | None, local_only: bool) -> ResolvedModel:
        """InstantID = IdentityNet + ip-adapter: one folder in the published layout, or the two parts apart
        (found by their usual names, or named: a mapping {"identitynet": ..., "ipadapter": ...}, as a ComfyUI
        workflow names them, each resolved in its own role's folders)."""
        if isinstance(spec, Mapping):
            return _instantid_parts(
                {
                    part: self.resolve(part, spec[part], local_only=local_only)
                    for part in ("identitynet", "ipadapter")
                }
            )
        if spec is not None:
            path = Path(str(spec)).expanduser()
            if path.is_dir():
                return _instantid_folder(path, "path")
            if path.exists() or _looks_like_path(str(spec)):
                raise ModelFormatError(
                    f"{spec}: InstantID needs a folder with ControlNetModel/ and ip-adapter.bin; give a separate "
                    "IdentityNet and ip-adapter instead when they are apart"
                )
            if find_preset(str(spec)) is None or find_preset(str(spec)).name != "instantid":
                raise ModelNotFoundError(
                    str(spec), ["idforge presets"], hint="the InstantID preset is 'instantid'"
                )
        preset = PRESETS["instantid"]
        for d in self.models_dirs:
            for name in (preset.name, *preset.comfy_names):
                if (d / name / "ControlNetModel").is_dir():
                    return _instantid_folder(d / name, "models_dir")
        # ComfyUI keeps the parts apart: ip-adapter in instantid/, IdentityNet in controlnet/.
        errors: list[ModelNotFoundError] = []
        parts: dict[str, ResolvedModel] = {}
        for part, part_preset in (("identitynet", "identitynet"), ("ipadapter", "instantid-ipadapter")):
            try:
                parts[part] = self._preset(part, PRESETS[part_preset], local_only=True)
            except ModelNotFoundError as exc:
                errors.append(exc)
        if len(parts) == 2:
            return _instantid_parts(parts)
        snapshot = hub.cached_files(preset.repo_id or "", preset.files, self.cache_dir)
        if snapshot is not None:
            return _instantid_folder(snapshot, "hf_cache")
        if not local_only and not self.offline:
            root = hub.download(
                preset.repo_id or "", preset.files, what="instantid", cache_dir=self.cache_dir
            )
            return _instantid_folder(root, "hub_download")
        looked = [p for e in errors for p in e.looked_in]
        looked.append(f"hub cache {self.cache_dir} ({preset.repo_id})")
        missing = " and ".join(e.model for e in errors) or "instantid"
        raise ModelNotFoundError(
            f"instantid ({missing})",
            list(dict.fromkeys(looked)),
            hint="put ip-adapter.bin in <models>/instantid/ and the IdentityNet in <models>/controlnet/ "
            "(or the InstantX/InstantID folder in <models>/), or run `idforge models fetch instantid`",
        )


def _fetch_target(models_dir: Path, preset: Preset) -> Path:
    """Where `fetch --models` puts a preset so that the store finds it again: ComfyUI folder + usual name."""
    from idforge.models.presets import COMFY_FOLDERS

    if preset.role == "instantid":
        return models_dir / "instantid"
    folders = COMFY_FOLDERS[preset.role]
    if preset.is_file:
        return models_dir / folders[0] / Path(preset.files[0]).name
    folder = "diffusers" if preset.role == "base" else folders[0]
    return models_dir / folder / preset.comfy_names[-1]


def _presets_for(role: str) -> list[str]:
    return [p.name for p in PRESETS.values() if p.role == role]


def _preset_path(root: Path, preset: Preset) -> Path:
    return root / preset.files[0] if preset.is_file else root / (preset.subfolder or "")


def _named_model(role: str, path: Path, source: str, *, name: str | None = None) -> ResolvedModel:
    """A model found by its path: a preset's usual file or folder name (`name`, the name the user gave where
    `path` is resolved through a link) says which preset it is."""
    preset = find_preset(name or path.name)
    return ResolvedModel(role, path, source, preset.name if preset else None)


def _remove(path: Path) -> None:
    """Clear what a fetch replaces, file or folder."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _instantid_parts(parts: Mapping[str, ResolvedModel]) -> ResolvedModel:
    """InstantID from its two parts found apart; the ip-adapter stands for the whole (path and source)."""
    return ResolvedModel(
        "instantid",
        parts["ipadapter"].path,
        parts["ipadapter"].source,
        "instantid",
        None,
        {part: resolved.path for part, resolved in parts.items()},
    )


def _instantid_folder(folder: Path, source: str) -> ResolvedModel:
    controlnet = folder / "ControlNetModel"
    adapters = [folder / n for n in ("ip-adapter.bin", "ip-adapter.safetensors") if (folder / n).is_file()]
    if not controlnet.is_dir() or not adapters:
        missing = [
            n
            for n, ok in (("ControlNetModel/", controlnet.is_dir()), ("ip-adapter.bin", bool(adapters)))
            if not ok
        ]
        raise ModelNotFoundError(
            "instantid",
            [str(folder)],
            hint=f"the folder lacks {' and '.join(missing)} (InstantX/InstantID layout)",
        )
    return ResolvedModel(
        "instantid",
        folder,
        source,
        "instantid",
        "InstantX/InstantID",
        {"identitynet": controlnet, "ipadapter": adapters[0]},
    )


# ---- face packs ---------------------------------------------------------------------------------------------
def _has_onnx(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix == ".onnx" for p in folder.iterdir())


def _nested_error(folder: Path) -> ModelFormatError:
    return ModelFormatError(
        f"{folder}: the pack is nested as {folder.name}/{folder.name}/ (the zip was unpacked into a folder of the "
        f"same name); move the .onnx files from {folder / folder.name} up into {folder}"
    )


def _find_face_pack(name: str, models_dirs: Sequence[Path], *, explicit: bool) -> tuple[Path, str]:
    path = Path(name).expanduser()
    if explicit and path.exists():
        if _has_onnx(path):
            return path.resolve(), "path"
        if _has_onnx(path / path.name):
            raise _nested_error(path)
        raise ModelFormatError(f"{path}: not an insightface model pack (no .onnx files in it)")
    if (explicit and _looks_like_path(name)) or path.is_absolute():
        raise ModelNotFoundError(name, [str(path)], hint="the face pack folder does not exist")
    places: list[tuple[Path, str]] = []
    for d in models_dirs:
        places.append((d / "insightface" / "models" / name, "comfyui"))
        places.append((d / "insightface" / name, "comfyui"))
    places.append((Path.home() / ".insightface" / "models" / name, "insightface_home"))
    nested: Path | None = None
    for folder, source in places:
        if _has_onnx(folder):
            return folder, source
        if nested is None and _has_onnx(folder / name):
            nested = folder
    if nested is not None:
        raise _nested_error(nested)
    where = (
        models_dirs[0] / "insightface" / "models" / name
        if models_dirs
        else Path.home() / ".insightface" / "models" / name
    )
    raise ModelNotFoundError(
        name,
        [str(f) for f, _ in places],
        hint=f"unpack the {name} pack so that {where}/*.onnx exist; " + INSIGHTFACE_NOTE.format(name=name),
    )


def _prefer_folders_over_twins(found: list[Path]) -> list[Path]:
    """One model kept twice, as a diffusers folder and as a single file of the same name (the tiny kit does
    this, and so do users who convert), counts once: the folder, which loads without conversion."""
    folder_names = {entry.name.lower() for entry in found if entry.is_dir()}
    return [
        entry
        for entry in found
        if entry.is_dir() or entry.name[: -len(entry.suffix) or None].lower() not in folder_names
    ]


def resolve_face_pack(
    spec: str | Path | None, *, models_dirs: Sequence[str | Path] = (), default: str = "antelopev2"
) -> Path:
    """The folder of an insightface model pack (ONNX files): a path, or a pack name searched in the models
    folders (insightface/models/<name>), IDFORGE_MODELS and ~/.insightface/models/<name>."""
    dirs = comfy.expand_models_dirs(models_dirs)
    name = str(spec) if spec is not None else default
    path, _ = _find_face_pack(name, dirs, explicit=spec is not None)
    return path


__all__ = ["SOURCES", "ModelStore", "ResolvedModel", "resolve_face_pack"]
