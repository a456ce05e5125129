"""The method registry: everything about a method, in one object, read by the CLI, the HTTP API, OpenAPI, the
studio, previews, pricing, batching and the warm-up.

A `Method` carries its parameter model (the one vocabulary of the CLI flags and the HTTP body), how its image
inputs appear on the command line, how a call becomes its engine request, how it runs, how many images a body
generates (pricing), its batching key, its warm-up body, which previews it needs, how its request is rebuilt
from a recipe (`idforge reproduce`) and which module holds its ComfyUI nodes (`idforge workflow`). Adding a method
is one new package under `methods/` that builds a `Method`, plus one line in `BUILTIN`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from idforge.errors import ParameterError
from idforge.methods.body import MethodBody

if TYPE_CHECKING:
    import argparse

    from idforge.engine.params import GenerationParams
    from idforge.engine.result import GenerationResult
    from idforge.engine.session import Engine

ProgressCallback = Callable[[int, int], None]
Params = TypeVar("Params")

# name -> module whose `METHOD` is the Method (imported on first use: the bodies are light, the engines are not)
BUILTIN: dict[str, str] = {
    "instantid": "idforge.methods.instantid.method",
    "faceid": "idforge.methods.faceid.method",
    "insta-depth": "idforge.methods.insta_depth.method",
    "pulid": "idforge.methods.pulid.method",
}


@dataclass(frozen=True)
class ImageInput:
    """An image field of the body and its command-line flag. `extra` names the list field that takes the
    flag's second and later values (`--face A --face B` -> face_image A, extra_face_images [B])."""

    field: str
    flag: str
    help: str
    required: bool = False
    extra: str | None = None


@dataclass(frozen=True)
class FaceSearch:
    """How a method finds the reference face: its default face pack and which face it takes when there are
    several (the studio's face preview shows exactly that choice)."""

    pack: str = "antelopev2"
    pick: str = "largest"
    det_size: int = 640


@dataclass
class MethodCall:
    """One call of a method, whichever way it came in: parameters in the body's vocabulary (every body field, the
    defaults filled in), images by field (paths or bytes; persons' as `persons[i].face_image`), the sampler
    settings, the people of a several-people request, and the CLI's own options (model files, face choice)."""

    params: dict[str, Any]
    images: dict[str, Any]
    generation: GenerationParams
    persons: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def image(self, name: str) -> Any:
        return self.images.get(name)

    def faces(self, name: str = "face_image", extra: str = "extra_face_images") -> list[Any]:
        """The reference faces: the first field and its list of extras, in order."""
        first = self.images.get(name)
        return [] if first is None else [first, *(self.images.get(extra) or [])]

    def parameters(self, params_class: type[Params], **extra: Any) -> Params:
        """A method's parameter object (a dataclass) from the body fields of the same names, the command line's
        face choice (`--pick`) and `extra`: the body and the engine share one vocabulary, so nothing is renamed."""
        names = {item.name for item in dataclasses.fields(params_class)}  # type: ignore[arg-type]
        values = {name: value for name, value in self.params.items() if name in names}
        if "pick" in names and "pick" in self.options:
            values["pick"] = self.options["pick"]
        return params_class(**(values | extra))

    def request(self, request_class: type[Params], **fields: Any) -> Params:
        """A method's engine request (a dataclass) with what every call carries filled in where the request takes
        it (the reference faces, the persons, the sampler settings), plus `fields`."""
        names = {item.name for item in dataclasses.fields(request_class)}  # type: ignore[arg-type]
        shared = {"faces": self.faces(), "persons": self.persons, "generation": self.generation}
        return request_class(**({name: value for name, value in shared.items() if name in names} | fields))


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported on its first call: the registry loads with the bodies only, the engines (torch)
    when a method first runs."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


@dataclass(frozen=True)
class CommandLine:
    """What the command line adds to the body's flags: its own arguments (model files, outputs), the options it
    reads from them (`MethodCall.options`, read by `build_request`), the model choices it passes to the Engine,
    and what it writes after the images. Every method's command is built from its body plus this
    (commands/method.py); a method keeps these in its `cli.py`.

    `person_strengths` (the help for the strengths a `--person` takes) gives the command `--person` for several
    people; `pick` gives it `--pick`, the face choice in reference images (default: the method's `face_search`)."""

    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    options: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    model_choices: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    after: Callable[[argparse.Namespace, Any], None] | None = None
    person_strengths: str | None = None
    pick: bool = False
    lora_flag: str = "--lora"  # the flag of extra LoRAs (FaceID's --lora is its own LoRA: --extra-lora there)
    flags: Mapping[str, str] = field(default_factory=dict)  # body field -> flag when not --field-name
    skip: frozenset[str] = frozenset()  # body fields with no flag (HTTP-only)
    help: str = ""


@dataclass(frozen=True)
class Method:
    """Everything idforge knows about one method."""

    name: str  # the CLI command and the URL path (/v1/<name>, /v2/<name>)
    title: str  # for people: "InstantID"
    summary: str  # one line for the API docs and `idforge --help`
    body: type[MethodBody]
    images: tuple[ImageInput, ...]
    build_request: Callable[[MethodCall], Any]
    run: Callable[[Engine, Any, ProgressCallback | None], GenerationResult]
    cli: CommandLine = field(default_factory=CommandLine)
    check: Callable[[MethodCall], None] | None = (
        None  # cross-field rules, before anything is queued or charged
    )
    outputs: Callable[[MethodBody], int] | None = (
        None  # images delivered per request (default num_images or 1)
    )
    extras: Callable[[MethodCall, GenerationResult], dict[str, Any]] | None = (
        None  # extra images for the reply
    )
    run_batch: Callable[[Engine, Sequence[Any], ProgressCallback], list[Any]] | None = None
    batch_key: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None  # (params, given images) -> key
    warm_up_images: tuple[str, ...] = (
        "face_image",
    )  # image fields the warm-up job fills with a synthetic face
    previews: tuple[str, ...] = ()  # what the studio previews for it: "faces", "keypoints", "depth"
    face_search: FaceSearch = field(default_factory=FaceSearch)
    error_fields: Mapping[str, str] = field(default_factory=dict)  # engine parameter name -> body field
    # `idforge reproduce`: the request a recipe records (from a methods.reproduce.RecipeCall), and the recipe
    # `method` names it rebuilds (default: the method's name)
    from_recipe: Callable[[Any], Any] | None = None
    recipe_methods: tuple[str, ...] = ()
    # ComfyUI workflows: the module whose `COMFY` (a comfy.catalog.ComfySupport) holds the method's node classes
    # and its rule (imported by workflow/registry.py when a workflow is read; None: no ComfyUI nodes)
    workflow: str | None = None

    @property
    def recipe_names(self) -> tuple[str, ...]:
        return self.recipe_methods or (self.name,)

    def output_count(self, body: MethodBody) -> int:
        """Images a request generates (the price is per image): best-of-N generates N per delivered one."""
        delivered = self.outputs(body) if self.outputs else getattr(body, "num_images", 1)
        return delivered * body.best_of

    def error_field(self, error: Exception) -> str | None:
        """The body field an engine error is about: the field its input name carries, or the exact table."""
        typed = getattr(error, "field", None)
        if typed:
            return typed
        name = getattr(error, "name", None)
        if not name:
            return None
        name = str(name)
        if name in self.error_fields:
            return self.error_fields[name]
        if name in GENERATION_FIELDS:
            return GENERATION_FIELDS[name]
        return name if name in self.body.model_fields else None


# GenerationParams' names for the body's fields
GENERATION_FIELDS = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "width/height": "width",
    "style": "style",
    "preset": "preset",
    "best_of": "best_of",
    "num_images": "num_images",
    "prompt": "prompt",
}

_methods: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (a plugin or a test's); its name must be new."""
    _load_builtin()
    if method.name in _methods:
        raise ParameterError("method", f"{method.name!r} is already registered")
    _methods[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with `register` (tests)."""
    if name in BUILTIN:
        raise ParameterError("method", f"{name!r} is built in")
    _methods.pop(name, None)


def _load_builtin() -> None:
    for name, module in BUILTIN.items():
        if name not in _methods:
            method = importlib.import_module(module).METHOD
            if method.name != name:
                raise RuntimeError(f"{module}.METHOD is named {method.name!r}, registered as {name!r}")
            _methods[name] = method


def methods() -> Iterator[Method]:
    """Every method, built-ins first in their order, then the registered ones."""
    _load_builtin()
    yield from list(_methods.values())


def method_names() -> tuple[str, ...]:
    return tuple(method.name for method in methods())


def get_method(name: str) -> Method:
    """The method called `name`; a ParameterError listing the known ones otherwise."""
    _load_builtin()
    if name not in _methods:
        raise ParameterError("method", f"unknown method {name!r} (methods: {', '.join(_methods)})")
    return _methods[name]


def call_params(body: MethodBody) -> dict[str, Any]:
    """The body's parameters (images left out), with the preset's sampler settings left to the preset."""
    image_fields = {image.field for image in get_method_by_body(body).images} | {
        image.extra for image in get_method_by_body(body).images if image.extra
    }
    params: dict[str, Any] = {}
    given = body.model_fields_set
    for name in type(body).model_fields:
        if name in image_fields or name in type(body).ALIASES:
            continue
        value = getattr(body, name)
        if (
            body.preset is not None
            and name in ("num_inference_steps", "guidance_scale")
            and name not in given
        ):
            value = None  # the preset's (GenerationParams fills it)
        params[name] = value
    return params


def get_method_by_body(body: MethodBody) -> Method:
    for method in methods():
        if isinstance(body, method.body):
            return method
    raise ParameterError("method", f"no method takes a {type(body).__name__}")


def generation_from_params(params: Mapping[str, Any], **extra: Any) -> GenerationParams:
    """The sampler settings of a call from its body parameters (`extra`: the CLI's scheduler, LoRAs, device)."""
    from idforge.engine.params import GenerationParams

    seed = params.get("seed")
    return GenerationParams(
        prompt=params["prompt"],
        negative_prompt=params.get("negative_prompt") or "",
        steps=params.get("num_inference_steps"),
        guidance=params.get("guidance_scale"),
        seed=None if seed is None or seed < 0 else seed,
        width=params.get("width"),
        height=params.get("height"),
        num_images=params.get("num_images", 1),
        style=params.get("style"),
        preset=params.get("preset"),
        best_of=params.get("best_of", 1),
        score_models=params.get("score_models"),
        **extra,
    )
