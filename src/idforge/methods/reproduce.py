"""Regenerate an image from its recipe alone, plus its input images: `reproduce(png_or_recipe, ...)`.

1. The recipe comes from a PNG's `idforge` text chunk, a JSON file (a recipe, or an HTTP result body holding one),
   a recipe dict or a `Recipe`.
2. Input images are not stored in recipes, only their names and `pixels_sha256`. Images passed as arguments win
   (`faces=[...]`, `pose=`, `kps_image=`, `mask=`, `negative_image=`, `attn_mask=`, `depth_map=`; `instantid_faces=`
   for the InstantID half of a FaceID + InstantID recipe); any other is looked up by the name the recipe recorded:
   that path as it was given (absolute, or relative to the working folder), then relative to and by file name in
   the PNG's folder and each of `search_dirs`. Every image is checked against the recorded `pixels_sha256` (sha256
   of its decoded RGB pixels: a re-encoded PNG of the same pixels passes); a different image is an InputImageError
   (`check_inputs=False`: a difference instead). An image given in memory (HTTP uploads) was recorded as `<image>`
   or "face image 0" and must be passed.
3. The Engine gets the recorded device, dtype and fast-path switches (`device=` overrides the device; `engine=`
   uses an engine of yours, settings that differ are reported). Models: each recorded file where it still exists,
   else its file name looked up in `models_dirs` (InstantID: the default lookup); then every model's sha256 is
   compared with the recorded one.
4. The method's request is rebuilt from the recorded parameters and generated. An image that was one of a batch
   (its recipe's batch_size > 1) is regenerated with its whole batch from batch_seed, since a batched UNet call
   rounds differently from a single one; `Reproduction.image` is that image of the batch.

On the same machine, with the same models and inputs, the image is bit-for-bit the original (tests/test_recipe.py).
`Reproduction.differences` lists what was not the same (models whose sha256 changed, device, dtype, switches,
scheduler, torch/diffusers versions): any of them may change pixels. Methods: instantid, faceid (also batch mode,
and FaceID + InstantID), insta_depth, pulid. Several people (persons) are refused; a job that shared a server batch pass
(`batch` section) is regenerated alone, which can differ by float rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from idforge.engine.inputs import ImageSource
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import Recipe, pixels_digest
from idforge.engine.result import GenerationResult, read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import InputImageError, ParameterError

if TYPE_CHECKING:
    from idforge.methods.instantid.core import InstantIDRequest

ProgressCallback = Callable[[int, int], None]


@dataclass
class Reproduction:
    """The regenerated image, the run that made it (its whole batch, if it was one of several), the recipe it
    followed, and what differed from the recorded set-up (empty: same models, runtime and inputs)."""

    image: Image.Image
    result: GenerationResult
    recipe: Recipe
    index: int = 0  # the image's index in `result`
    differences: list[str] = field(default_factory=list)

    def image_recipe(self) -> dict[str, Any]:
        """The regenerated image's own recipe (as written into its PNG)."""
        return self.result.image_recipe(self.index)


def load_recipe(source: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """A Recipe from a PNG path, a JSON file (a recipe or a result body with `recipe`), a dict or a Recipe."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    path = Path(source)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputImageError(str(path), f"not a readable recipe JSON file ({exc})") from None
        data = data.get("recipe", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or "method" not in data:
            raise InputImageError(str(path), "holds no idforge recipe (no `method`)")
        return Recipe.from_dict(data)
    try:
        return Recipe.from_dict(read_recipe(path))
    except (OSError, ValueError) as exc:
        raise InputImageError(str(path), str(exc).removeprefix(f"{path}: ")) from None


def reproduce(
    source: str | Path | Mapping[str, Any] | Recipe,
    *,
    faces: Sequence[ImageSource] | None = None,
    pose: ImageSource | None = None,
    kps_image: ImageSource | None = None,
    mask: ImageSource | None = None,
    negative_image: ImageSource | None = None,
    attn_mask: ImageSource | None = None,
    depth_map: ImageSource | None = None,
    instantid_faces: Sequence[ImageSource] | None = None,
    search_dirs: Sequence[str | Path] = (),
    models_dirs: Sequence[str | Path] = (),
    offline: bool | None = None,
    device: str | None = None,
    engine: Engine | None = None,
    check_inputs: bool = True,
    progress: ProgressCallback | None = None,
) -> Reproduction:
    """Regenerate the image a recipe describes (see the module docstring for how inputs and models are found)."""
    recipe = load_recipe(source)
    folders = [Path(d) for d in search_dirs]
    if isinstance(source, str | Path) and Path(source).exists():
        folders.insert(0, Path(source).resolve().parent)
    if recipe.method not in METHODS:
        raise ParameterError(
            "recipe", f"method {recipe.method!r} cannot be reproduced ({', '.join(METHODS)})"
        )
    if recipe.sections.get("persons"):
        raise ParameterError("recipe", "several people in one image cannot be reproduced from a recipe yet")
    differences: list[str] = []
    if recipe.sections.get("batch"):
        differences.append("made in a server batch pass with other jobs: regenerated alone (float rounding)")

    finder = _InputFinder(folders, check_inputs, differences)
    if engine is None:
        engine = _engine_for(recipe, models_dirs, offline, device, differences)
    gen, index = _generation(recipe)
    given = _Given(faces, pose, kps_image, mask, negative_image, attn_mask, depth_map, instantid_faces)
    result = _RUNS[recipe.method](_Rebuild(recipe, gen, finder, given), engine, progress)

    new = Recipe.from_dict(result.recipe)
    differences += _model_differences(recipe.models, new.models)
    if recipe.method == "instantid+faceid":
        old_part = (recipe.sections.get("instantid") or {}).get("models") or {}
        new_part = (new.sections.get("instantid") or {}).get("models") or {}
        differences += _model_differences(old_part, new_part, "instantid.")
    if recipe.runtime is not None and new.runtime is not None:
        differences += _runtime_differences(recipe.runtime.to_dict(), new.runtime.to_dict())
    index = min(index, len(result.images) - 1)
    return Reproduction(result.images[index], result, recipe, index, differences)


# ---- one request per method ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Given:
    """The input images passed to `reproduce`: each wins over the one the recipe names."""

    faces: Sequence[ImageSource] | None
    pose: ImageSource | None
    kps_image: ImageSource | None
    mask: ImageSource | None
    negative_image: ImageSource | None
    attn_mask: ImageSource | None
    depth_map: ImageSource | None
    instantid_faces: Sequence[ImageSource] | None


@dataclass(frozen=True)
class _Rebuild:
    """What every method's request is rebuilt from: the recipe, the generation to run, the inputs."""

    recipe: Recipe
    generation: GenerationParams
    finder: _InputFinder
    given: _Given

    def faces(self) -> list[ImageSource]:
        return self.finder.faces(self.recipe.inputs.get("faces"), self.given.faces, "faces")

    def model(self, role: str) -> str | None:
        return _model_spec(self.recipe.models.get(role))


def _instantid_request(
    rebuild: _Rebuild,
    section: Mapping[str, Any],
    faces: list[ImageSource],
    generation: GenerationParams | None = None,
    base: str | None = None,
) -> InstantIDRequest:
    """InstantID's request from a recipe section (the recipe, or FaceID + InstantID's `instantid` part, which
    records no generation or base of its own)."""
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.params import InstantIDParams

    inputs, models = section.get("inputs") or {}, section.get("models") or {}
    finder, given = rebuild.finder, rebuild.given
    return InstantIDRequest(
        faces=faces,
        generation=generation or GenerationParams(),
        instantid=_params(InstantIDParams, section.get("params") or {}),
        pose=finder.one("pose", inputs, given.pose),
        kps_image=finder.one("kps_image", inputs, given.kps_image),
        mask=finder.one("mask", inputs, given.mask),
        pose_fallback=True,  # a pose without a face only ran (on the reference keypoints) with the fallback
        base=base,
        instantid_model=_instantid_spec(models),
        face_models=_model_spec(models.get("face_models")),
    )


def _run_instantid(rebuild: _Rebuild, engine: Engine, progress: ProgressCallback | None) -> GenerationResult:
    from idforge.methods.instantid.generate import generate_instantid

    recipe = rebuild.recipe
    section = {"inputs": recipe.inputs, "params": recipe.params, "models": recipe.models}
    request = _instantid_request(rebuild, section, rebuild.faces(), rebuild.generation, rebuild.model("base"))
    return generate_instantid(engine, request, progress)


def _run_faceid(rebuild: _Rebuild, engine: Engine, progress: ProgressCallback | None) -> GenerationResult:
    """FaceID, alone or with InstantID's half (its own faces, parameters and models in the `instantid` part)."""
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid

    recipe, finder, given = rebuild.recipe, rebuild.finder, rebuild.given
    lora = (recipe.models.get("lora") or {}).get("source")
    request = FaceIDRequest(
        faces=rebuild.faces(),
        generation=rebuild.generation,
        faceid=_params(FaceIDParams, recipe.params),
        negative_image=finder.one("negative_image", recipe.inputs, given.negative_image),
        attn_mask=finder.one("attn_mask", recipe.inputs, given.attn_mask),
        adapter=rebuild.model("ip_adapter"),
        lora=None if lora in (None, "embedded") else rebuild.model("lora"),
        clip_vision=rebuild.model("clip_vision"),
        base=rebuild.model("base"),
        face_models=rebuild.model("face_models"),
    )
    instantid = None
    if recipe.method == "instantid+faceid":
        part = recipe.sections.get("instantid") or {}
        recorded = (part.get("inputs") or {}).get("faces")
        faces = finder.faces(recorded, given.instantid_faces, "instantid_faces")
        instantid = _instantid_request(rebuild, part, faces)
    return generate_faceid(engine, request, progress, instantid=instantid)


def _run_pulid(rebuild: _Rebuild, engine: Engine, progress: ProgressCallback | None) -> GenerationResult:
    from idforge.methods.pulid.core import PulidParams, PulidRequest
    from idforge.methods.pulid.generate import generate_pulid

    recipe = rebuild.recipe
    request = PulidRequest(
        faces=rebuild.faces(),
        generation=rebuild.generation,
        pulid=_params(PulidParams, recipe.params),
        attn_mask=rebuild.finder.one("attn_mask", recipe.inputs, rebuild.given.attn_mask),
        model=rebuild.model("pulid"),
        eva_clip=rebuild.model("eva_clip"),
        face_parser=rebuild.model("face_parser"),
        base=rebuild.model("base"),
        face_models=rebuild.model("face_models"),
    )
    return generate_pulid(engine, request, progress)


def _run_insta_depth(
    rebuild: _Rebuild, engine: Engine, progress: ProgressCallback | None
) -> GenerationResult:
    """Insta Depth: one face (older recipes recorded it as `face`), a pose it cannot run without."""
    from idforge.methods.insta_depth.generate import (
        InstaDepthParams,
        InstaDepthRequest,
        generate_insta_depth,
    )
    from idforge.methods.instantid.params import InstantIDParams

    recipe, finder, given = rebuild.recipe, rebuild.finder, rebuild.given
    inputs = recipe.inputs
    recorded_faces = inputs.get("faces") or [{"image": inputs.get("face")}]
    first_given = None if given.faces is None else list(given.faces)[:1]
    request = InstaDepthRequest(
        face=finder.faces(recorded_faces[:1], first_given, "faces")[0],
        pose=finder.required("pose", inputs, given.pose),
        generation=rebuild.generation,
        instantid=_params(InstantIDParams, recipe.params),
        depth=_params(InstaDepthParams, recipe.params),
        depth_map=finder.one("depth_map", inputs, given.depth_map),
        base=rebuild.model("base"),
        instantid_model=_instantid_spec(recipe.models),
        face_models=rebuild.model("face_models"),
        depth_controlnet=rebuild.model("depth_controlnet"),
        depth_estimator=rebuild.model("depth_estimator"),
    )
    return generate_insta_depth(engine, request, progress)


_RUNS: dict[str, Callable[[_Rebuild, Engine, ProgressCallback | None], GenerationResult]] = {
    "instantid": _run_instantid,
    "faceid": _run_faceid,
    "instantid+faceid": _run_faceid,
    "insta_depth": _run_insta_depth,
    "pulid": _run_pulid,
}
METHODS = tuple(_RUNS)


# ---- the pieces ---------------------------------------------------------------------------------------------------


def _params(cls: type, values: Mapping[str, Any]) -> Any:
    """A parameter object from the recipe's flat params (its own fields only)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _generation(recipe: Recipe) -> tuple[GenerationParams, int]:
    """The generation parameters to run, and the index of the recipe's image in that run: an image of a batch
    is regenerated with its whole batch (batch_seed, batch_size)."""
    values = dict(recipe.generation)
    sections = recipe.sections
    index = 0
    if int(sections.get("batch_size") or 1) > 1 and sections.get("batch_seed") is not None:
        values["seed"] = sections["batch_seed"]
        values["num_images"] = int(sections["batch_size"])
        index = int(sections.get("batch_index") or 0)
    if recipe.runtime is not None:  # the GenerationParams fields say what ran (older recipes: "auto")
        values["dtype"] = recipe.runtime.dtype
    values["best_of"] = 1  # a recipe is one image's: best-of-N recorded its winner's seed
    return _params(GenerationParams, values), index


def _engine_for(
    recipe: Recipe,
    models_dirs: Sequence[str | Path],
    offline: bool | None,
    device: str | None,
    differences: list[str],
) -> Engine:
    choice = ModelChoice(models_dirs=[str(d) for d in models_dirs], offline=offline)
    runtime = recipe.runtime
    if runtime is None:
        differences.append(
            "the recipe records no runtime (made before recipe format 2): device and dtype auto"
        )
        return Engine(choice, device=device or "auto")
    return Engine(choice, device=device or runtime.device, dtype=runtime.dtype, fast=runtime.fast_path())


def _model_spec(entry: Mapping[str, Any] | None) -> str | None:
    """The recorded model file where it still exists, a hub id as recorded, else its name for the model store
    to find in the models folders; None when the recipe names none (the method's default)."""
    source = (entry or {}).get("source")
    if not source:
        return None
    path = Path(source)
    if path.exists():
        return str(path)
    if not path.is_absolute() and source.count("/") == 1 and not source.startswith("."):
        return source  # "org/name": a hub id (the store finds it in the hub cache, or downloads it)
    return path.name


def _instantid_spec(models: Mapping[str, Any]) -> str | None:
    """The InstantID folder (ControlNetModel/ beside the ip-adapter) where it still exists, else the default
    lookup (which also finds ComfyUI's parts kept apart)."""
    identitynet = Path((models.get("identitynet") or {}).get("source") or "")
    adapter = Path((models.get("ip_adapter") or {}).get("source") or "")
    folder = identitynet.parent
    if identitynet.name == "ControlNetModel" and adapter.parent == folder and folder.is_dir():
        return str(folder)
    return None


class _InputFinder:
    """Input images: given, else found by their recorded names; each checked against its pixels_sha256."""

    def __init__(self, folders: list[Path], check: bool, differences: list[str]) -> None:
        self.folders = folders
        self.check = check
        self.differences = differences

    def faces(
        self, recorded: Sequence[Mapping[str, Any]] | None, given: Sequence[ImageSource] | None, argument: str
    ) -> list[ImageSource]:
        recorded = list(recorded or [])
        if given is not None:
            given = list(given)
            if recorded and len(given) != len(recorded):
                raise ParameterError(
                    argument, f"{len(given)} images given; the recipe's reference faces are {len(recorded)}"
                )
            return [
                self._checked(source, entry.get("pixels_sha256"), entry.get("image") or f"face image {i}")
                for i, (source, entry) in enumerate(zip(given, recorded or [{}] * len(given), strict=True))
            ]
        if not recorded:
            raise ParameterError(argument, "the recipe records no reference faces; pass them")
        return [
            self._found(entry.get("image"), entry.get("pixels_sha256"), f"face image {i}", argument)
            for i, entry in enumerate(recorded)
        ]

    def required(self, role: str, inputs: Mapping[str, Any], given: ImageSource | None) -> ImageSource:
        """`one` for an image the method cannot run without."""
        found = self.one(role, inputs, given, required=True)
        assert found is not None  # one() raises instead
        return found

    def one(
        self, role: str, inputs: Mapping[str, Any], given: ImageSource | None, required: bool = False
    ) -> ImageSource | None:
        digest = (inputs.get("pixels_sha256") or {}).get(role)
        name = inputs.get(role)
        if given is not None:
            return self._checked(given, digest, name or role)
        if name is None:
            if required:
                raise ParameterError(role, "the recipe records no name for this image; pass it")
            return None
        return self._found(name, digest, role.replace("_", " "), role)

    def _found(self, name: str | None, digest: str | None, label: str, argument: str) -> ImageSource:
        candidates: list[Path] = []
        if name and not name.startswith("<"):
            recorded = Path(name)
            candidates.append(recorded)
            for folder in self.folders:
                if not recorded.is_absolute():
                    candidates.append(folder / recorded)
                candidates.append(folder / recorded.name)
        for path in candidates:
            if path.is_file():
                return self._checked(str(path), digest, str(path))
        where = ", ".join(dict.fromkeys(str(p) for p in candidates)) or "nowhere (it was given in memory)"
        raise InputImageError(
            name or label,
            f"the recipe's {label} is not found (looked in: {where}); pass it as `{argument}` (CLI: --"
            f"{argument.replace('_', '-').removesuffix('s')})",
        )

    def _checked(self, source: ImageSource, digest: str | None, name: str) -> ImageSource:
        if digest is None:
            return source
        actual = pixels_digest(source)
        if actual != digest:
            problem = "is not the image this recipe was made from (its pixels' sha256 differs)"
            if self.check:
                raise InputImageError(name, f"{problem}; pass the original, or check_inputs=False")
            self.differences.append(f"{name} {problem}")
        return source


def _model_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if (before is None) != (after is None):
            found.append(f"model {prefix}{key}: recorded {before}, now {after}")
        elif isinstance(before, dict) and isinstance(after, dict):
            if before.get("sha256") and after.get("sha256") and before["sha256"] != after["sha256"]:
                found.append(
                    f"model {prefix}{key}: sha256 {before['sha256'][:12]} recorded, now {after['sha256'][:12]}"
                )
    return found


def _runtime_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "runtime."
) -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += _runtime_differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append(f"{prefix}{key}: recorded {before!r}, now {after!r}")
    return found
