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
scheduler, torch/diffusers versions): any of them may change pixels. Methods: every registered method with a
`from_recipe` (the request a recipe records, from a `RecipeCall`; each method keeps its own in its method.py):
instantid, faceid (also batch mode, and FaceID + InstantID), insta_depth, pulid. Several people (a `persons`
section): each person's faces and mask image are found by their recorded names (they cannot be passed) and checked,
its region and strengths are as recorded. A job that shared a server batch pass (`batch` section) is regenerated
alone, which can differ by float rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from idforge.engine.inputs import ImageSource
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import Recipe, pixels_digest
from idforge.engine.result import GenerationResult, read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import InputImageError, ParameterError
from idforge.methods.persons import Person, region_given
from idforge.methods.registry import Method, methods

ProgressCallback = Callable[[int, int], None]
# a Person's strengths and window -> the name an adapter method's person recipe gives it (InstantID's: the same)
PERSON_RECORDS = {
    "ip_weight": "weight",
    "cn_strength": "cn_strength",
    "start_at": "start_at",
    "end_at": "end_at",
}
# recipe inputs that are not one image of that name (faces: a list; the others: facts about the inputs)
NOT_IMAGES = frozenset({"faces", "pixels_sha256", "batch_references", "kps_source"})


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
    _method_for(recipe.method)  # an unknown method fails before any file is looked up
    if recipe.sections.get("persons") and faces is not None:
        raise ParameterError(
            "faces",
            "a several-people recipe's faces are each person's: they are found by their recorded names",
        )
    differences: list[str] = []
    if recipe.sections.get("batch"):
        differences.append("made in a server batch pass with other jobs: regenerated alone (float rounding)")

    finder = _InputFinder(folders, check_inputs, differences)
    if engine is None:
        engine = _engine_for(recipe, models_dirs, offline, device, differences)
    gen, index = _generation(recipe)
    method = _method_for(recipe.method)
    given = {
        "faces": faces,
        "pose": pose,
        "kps_image": kps_image,
        "mask": mask,
        "negative_image": negative_image,
        "attn_mask": attn_mask,
        "depth_map": depth_map,
        "instantid_faces": instantid_faces,
    }
    assert method.from_recipe is not None  # _method_for picks only methods that rebuild recipes
    request = method.from_recipe(RecipeCall(recipe, gen, given, finder))
    result = method.run(engine, request, progress)

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


@dataclass
class RecipeCall:
    """What a method's `from_recipe` rebuilds its request from: the recorded parameters and models, the input
    images (given to `reproduce`, else found by their recorded names, each checked against its pixels_sha256) and
    the sampler settings to run."""

    recipe: Recipe
    generation: GenerationParams
    given: Mapping[str, Any]  # reproduce()'s image arguments by name: faces, pose, mask, attn_mask, ...
    finder: _InputFinder

    def request(self, request_class: type, **fields_: Any) -> Any:
        """A method's request with what the recipe records under the request's own field names filled in: the
        reference faces, the sampler settings, each model role (base, face_models, eva_clip, ...) and each input
        image (mask, pose, attn_mask, ...) of a field's name. `fields_` gives the rest: fields the recipe names
        otherwise or that are derived (they win over a recorded name)."""
        images = set(self.recipe.inputs) | {name for name, value in self.given.items() if value is not None}
        several = bool(self.recipe.sections.get("persons"))
        filled: dict[str, Any] = {}
        for item in fields(request_class):
            name = item.name
            if name in fields_:
                continue
            if name == "faces":
                filled[name] = [] if several else self.faces()
            elif name == "persons":
                filled[name] = self.persons() if several else []
            elif name == "generation":
                filled[name] = self.generation
            elif name in self.recipe.models:
                filled[name] = self.model(name)
            elif name in images and name not in NOT_IMAGES:
                filled[name] = self.image(name)
        return request_class(**(filled | fields_))

    def persons(self) -> list[Person]:
        """The people of a several-people recipe (its `persons` section) as they ran: each one's faces and mask
        image found by their recorded names and checked, its region as given, and the strengths and window it had
        apart from the request's (a value equal to the request's is left to the request, as it was given)."""
        people = []
        for index, entry in enumerate(self.recipe.sections.get("persons") or []):
            label = f"persons[{index}]"
            region = region_given(entry["region"]["given"])
            if "mask" in region:
                digest = entry["region"].get("mask_sha256")
                region["mask"] = self.finder.found(region["mask"], digest, f"{label} mask", None)
            own = {}
            for name, recorded in PERSON_RECORDS.items():
                key = recorded if recorded in entry else name
                value = entry.get(key)
                if value is not None and value != self.recipe.params.get(key):
                    own[name] = value
            faces = self.finder.faces(entry.get("faces"), None, f"{label}.faces", passable=False)
            people.append(Person(faces=faces, **region, **own))
        return people

    def params(self, params_class: type, values: Mapping[str, Any] | None = None) -> Any:
        """A parameter object from the recorded parameters (`values`: a section's own)."""
        return _params(params_class, self.recipe.params if values is None else values)

    def model(self, role: str, models: Mapping[str, Any] | None = None) -> str | None:
        """The recorded model of `role`: its file where it still exists, else its name for the models folders."""
        return _model_spec((self.recipe.models if models is None else models).get(role))

    def instantid_folder(self, models: Mapping[str, Any] | None = None) -> str | None:
        return _instantid_spec(self.recipe.models if models is None else models)

    def faces(self, argument: str = "faces", inputs: Mapping[str, Any] | None = None) -> list[ImageSource]:
        recorded = (self.recipe.inputs if inputs is None else inputs).get("faces")
        return self.finder.faces(recorded, self.given.get(argument), argument)

    def image(
        self, role: str, inputs: Mapping[str, Any] | None = None, required: bool = False
    ) -> ImageSource | None:
        """The input image of `role` (given as the argument of the same name, else found), or None."""
        recorded = self.recipe.inputs if inputs is None else inputs
        return self.finder.one(role, recorded, self.given.get(role), required=required)


def _method_for(recipe_method: str) -> Method:
    """The registered method that rebuilds recipes of `recipe_method` (a recipe's `method`)."""
    rebuilding = [method for method in methods() if method.from_recipe is not None]
    for method in rebuilding:
        if recipe_method in method.recipe_names:
            return method
    known = ", ".join(name for method in rebuilding for name in method.recipe_names)
    raise ParameterError("recipe", f"method {recipe_method!r} cannot be reproduced ({known})")


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
        self,
        recorded: Sequence[Mapping[str, Any]] | None,
        given: Sequence[ImageSource] | None,
        argument: str,
        passable: bool = True,
    ) -> list[ImageSource]:
        """Reference faces: `given` (checked), else found by their recorded names. `passable`: whether `argument`
        is one the caller can pass (a person's faces are not: they are only found)."""
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
            self.found(
                entry.get("image"),
                entry.get("pixels_sha256"),
                f"face image {i}",
                argument if passable else None,
            )
            for i, entry in enumerate(recorded)
        ]

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
        return self.found(name, digest, role.replace("_", " "), role)

    def found(self, name: str | None, digest: str | None, label: str, argument: str | None) -> ImageSource:
        """The recorded image `name`: as recorded, then in each folder (relative, then by file name), checked
        against `digest`. `argument`: the reproduce() argument that could pass it instead (None: none can)."""
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
        if argument is None:
            how = "put it beside the image or in a search folder (search_dirs; CLI: --search DIR)"
        else:
            how = f"pass it as `{argument}` (CLI: --{argument.replace('_', '-').removesuffix('s')})"
        raise InputImageError(name or label, f"the recipe's {label} is not found (looked in: {where}); {how}")

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
