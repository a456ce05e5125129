"""The recipe of a generation: one typed record (`Recipe`), built in one place (`build_recipe`), read back by
`Recipe.from_dict` (methods/reproduce.py regenerates an image from it).

`Recipe.to_dict()` is what the PNG text chunk `idforge` holds and what the HTTP API returns:

| key | what |
|---|---|
| method, idforge_version, recipe_format | which method made it, with which idforge; the layout of this dict (2) |
| seed, seeds, width, height | the first seed, every image's seed (image i: seed + i), the output size |
| params | every parameter, flat: the GenerationParams fields (+ styled prompts, preset settings) and the method's |
| param_groups | which `params` keys belong to the method's parameter objects ("instantid", "faceid", "depth"); the others are GenerationParams' |
| models | each model's resolved source and sha256 (base, adapters, ControlNets, LoRAs, face pack, preset files) |
| inputs | the input images by name; faces with box, score and `pixels_sha256`; `pixels_sha256` of the others |
| runtime | what actually ran: device ("cpu", "cuda:0"), UNet dtype, VAE dtype (at rest and when decoding), every FastPath switch, the scheduler class and config, torch/diffusers versions, fp32 matmul precision |
| timings | total seconds |
| anything else | the method's own sections: adapter_kind, instantid (FaceID + InstantID), persons, batch, best_of, identity; `workflow` (workflow/run.py: the ComfyUI file, format, KSampler and Save node ids, nodes used, model files) |

`params.device` and `params.dtype` are the resolved ones (never "auto"). Input images are never stored: `pixels_sha256`
is the sha256 of an image's decoded RGB pixels and shape (`session.image_digest`, the same for a PNG, its bytes or
an in-memory copy), so a reproduction can check it was given the same images. A recipe saved per image
(`GenerationResult.image_recipe`) also has batch_seed, batch_index and batch_size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from idforge import __version__
from idforge.engine.base import BaseModel, vae_decode_dtype
from idforge.engine.device import device_name
from idforge.engine.fastpath import FastPath
from idforge.engine.fewstep import few_step_models
from idforge.engine.hashing import model_hash
from idforge.engine.inputs import ImageSource, NamedImage, image_name, load_named
from idforge.engine.params import GenerationParams, params_to_dict
from idforge.engine.schedulers import make_scheduler
from idforge.engine.session import Engine, image_digest
from idforge.errors import IdforgeError

# 1 (or absent): recipes from before this module, without runtime, param_groups, seeds and input digests
RECIPE_FORMAT = 2
# what GenerationParams.recipe_extras adds to the generation parameters
GENERATION_EXTRAS = ("styled_prompt", "styled_negative_prompt", "preset_settings")
CORE_KEYS = (
    "method",
    "idforge_version",
    "recipe_format",
    "seed",
    "seeds",
    "width",
    "height",
    "params",
    "param_groups",
    "models",
    "inputs",
    "runtime",
    "timings",
)


def _json(value: Any) -> Any:
    """A JSON-compatible deep copy (tuples become lists, paths and other objects their text)."""
    return json.loads(json.dumps(value, default=str))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pixels_digest(source: ImageSource | NamedImage | None) -> str | None:
    """`pixels_sha256` of an input image (decoded to RGB as the methods decode it); None for no image."""
    if source is None:
        return None
    try:
        return image_digest(load_named(source, "input image").image)
    except IdforgeError:  # e.g. a float mask array: no image, so no digest (a reproduction cannot check it)
        return None


def input_digests(**sources: ImageSource | NamedImage | None) -> dict[str, str]:
    """{role: pixels_sha256} of the single-image inputs that were given (faces carry theirs in their entries)."""
    digests = {role: pixels_digest(source) for role, source in sources.items()}
    return {role: digest for role, digest in digests.items() if digest is not None}


def recorded_images(**sources: ImageSource | NamedImage | None) -> dict[str, Any]:
    """A recipe's record of single input images: each role's name (as given; "<image>" for one given in memory;
    None when not given) and, under `pixels_sha256`, each given one's digest: what a reproduction finds and
    checks them by (methods/reproduce.py)."""
    names = {
        role: None if source is None else image_name(source, "<image>") for role, source in sources.items()
    }
    return names | {"pixels_sha256": input_digests(**sources)}


@dataclass
class Runtime:
    """What actually ran, as opposed to what was asked ("auto"): an Engine with these settings regenerates it."""

    device: str  # "cpu", "cuda:0", "mps"
    dtype: str  # the UNet's (and so the engine's) dtype, e.g. "float32"
    vae_dtype: str  # the VAE's weights
    vae_decode_dtype: str  # what decoding ran in (an fp16 SDXL VAE is upcast to fp32 unless fast.vae_dtype)
    fast: dict[str, Any] = field(default_factory=lambda: FastPath().as_dict())  # every FastPath switch
    scheduler: dict[str, Any] = field(default_factory=dict)  # name, class, eta, config (spacing, ...)
    torch: str = ""
    diffusers: str = ""
    matmul_precision: str = ""  # torch.get_float32_matmul_precision(): "highest" unless TF32 was allowed

    @classmethod
    def capture(cls, engine: Engine, base: BaseModel, gen: GenerationParams) -> Runtime:
        import diffusers

        vae = base.pipe.vae
        scheduler = make_scheduler(
            gen.sampler()[2],
            base.pipe.scheduler.config,
            timestep_spacing=gen.timestep_spacing,
            prediction_type=gen.prediction_type,
        )
        config = {
            key: value
            for key, value in dict(scheduler.config).items()
            if not key.startswith("_") and _is_plain(value)
        }
        return cls(
            device=device_name(engine.device),
            dtype=dtype_name(base.unet.dtype),
            vae_dtype=dtype_name(vae.dtype),
            vae_decode_dtype=dtype_name(vae_decode_dtype(vae)),
            fast=engine.fast.as_dict(),
            scheduler={
                "name": gen.scheduler,
                "class": type(scheduler).__name__,
                "eta": gen.eta,
                "config": config,
            },
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            matmul_precision=torch.get_float32_matmul_precision(),
        )

    def fast_path(self) -> FastPath:
        """The FastPath these switches describe (unknown keys from a newer idforge are left out)."""
        known = {f.name for f in fields(FastPath)}
        return FastPath(**{k: v for k, v in self.fast.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return _json(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Runtime:
        known = {f.name for f in fields(cls)}
        return cls(**{k: _json(v) for k, v in data.items() if k in known})


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(_is_plain(v) for v in value)


@dataclass
class Recipe:
    """Everything needed to regenerate a result (see the module docstring for the dict it becomes)."""

    method: str
    seeds: list[int]
    width: int
    height: int
    generation: dict[str, Any]  # GenerationParams fields (+ styled prompts, preset settings)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {"instantid": {...}}
    models: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    runtime: Runtime | None = None  # None: a recipe from before RECIPE_FORMAT 2
    timings: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # the method's own top-level entries
    idforge_version: str = __version__
    recipe_format: int = RECIPE_FORMAT

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def params(self) -> dict[str, Any]:
        """All parameters flat, as the `params` key holds them."""
        merged = dict(self.generation)
        for values in self.method_params.values():
            merged.update(values)
        return merged

    def to_dict(self) -> dict[str, Any]:
        clash = sorted(set(self.sections) & set(CORE_KEYS))
        if clash:
            raise ValueError(f"recipe sections {clash} would overwrite the recipe's own keys")
        data = {
            "method": self.method,
            "idforge_version": self.idforge_version,
            "recipe_format": self.recipe_format,
            "seed": self.seed,
            "seeds": list(self.seeds),
            "width": self.width,
            "height": self.height,
            "params": self.params,
            "param_groups": {name: list(values) for name, values in self.method_params.items()},
            "models": self.models,
            "inputs": self.inputs,
            "runtime": None if self.runtime is None else self.runtime.to_dict(),
            "timings": self.timings,
        }
        return _json(data | self.sections)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Read a recipe dict back (this format, or an older one: its params are then split by field names)."""
        data = _json(dict(data))
        params = data.get("params") or {}
        groups = data.get("param_groups")
        if groups is None:  # recipe_format 1: generation fields, the rest is the method's
            generation_keys = {f.name for f in fields(GenerationParams)} | set(GENERATION_EXTRAS)
            rest = [k for k in params if k not in generation_keys]
            groups = {str(data.get("method", "method")): rest} if rest else {}
        grouped = {name: {k: params[k] for k in keys if k in params} for name, keys in groups.items()}
        in_sections = {k for keys in groups.values() for k in keys}
        generation = {k: v for k, v in params.items() if k not in in_sections}
        seed = data.get("seed", generation.get("seed"))
        seeds = data.get("seeds") or ([] if seed is None else [seed])
        runtime = data.get("runtime")
        return cls(
            method=data.get("method", ""),
            seeds=list(seeds),
            width=data["width"],
            height=data["height"],
            generation=generation,
            method_params=grouped,
            models=data.get("models") or {},
            inputs=data.get("inputs") or {},
            runtime=None if runtime is None else Runtime.from_dict(runtime),
            timings=data.get("timings") or {},
            sections={k: v for k, v in data.items() if k not in CORE_KEYS},
            idforge_version=data.get("idforge_version", ""),
            recipe_format=int(data.get("recipe_format", 1)),
        )


@dataclass(frozen=True)
class PassLayout:
    """What one denoising pass made, as its recipe records it: every image's seed, the output size, and when the
    call started (the recipe's total time)."""

    seeds: list[int]
    width: int
    height: int
    started: float


def build_recipe(
    engine: Engine,
    base: BaseModel,
    gen: GenerationParams,
    *,
    method: str,
    layout: PassLayout,
    params: Mapping[str, Any],
    models: Mapping[str, Any],
    inputs: Mapping[str, Any],
    sections: Mapping[str, Any] | None = None,
) -> Recipe:
    """The one place a recipe is made: `params` maps a section name to the method's parameter object(s)
    ({"instantid": InstantIDParams, "depth": InstaDepthParams}); `models` the method's model entries (the base
    and any few-step preset files are added here); the runtime is read off the engine and the base model."""
    seeds, width, height, started = layout.seeds, layout.width, layout.height, layout.started
    runtime = Runtime.capture(engine, base, gen)
    generation = params_to_dict(gen) | {
        "seed": seeds[0],
        "num_images": len(seeds),
        "device": runtime.device,
        "dtype": runtime.dtype,
    }
    return Recipe(
        method=method,
        seeds=list(seeds),
        width=width,
        height=height,
        generation=_json(generation),
        method_params=_json({name: params_to_dict(obj) for name, obj in params.items()}),
        models=_json(
            {"base": {"source": base.source, "sha256": model_hash(base.source)}}
            | dict(models)
            | few_step_models(engine, gen)
        ),
        inputs=_json(dict(inputs)),
        runtime=runtime,
        timings={"total_s": round(time.perf_counter() - started, 3)},
        sections=dict(sections or {}),
    )
