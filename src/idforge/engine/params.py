"""Parameter objects for every generation method, validated on construction.

Ranges and defaults come from the reference nodes (seed 000: Apply InstantID Advanced, seed 001: IPAdapter FaceID
Batch) and from SPEC.md. Validation happens here, before any model is loaded, so a bad request fails fast and costs
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from idforge.engine.inputs import ImageSource, image_name
from idforge.errors import ParameterError, check_choice, check_range

SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm", "tcd")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 5.0
DEFAULT_SCHEDULER = "euler"
DTYPES = ("auto", "float32", "float16", "bfloat16")
INSTANTID_COMBINE = ("average", "norm average", "concat")
FACE_PICKS = ("largest", "score")

MAX_SEED = 999_999_999_999_999
MAX_BEST_OF = 16  # candidates per best-of-N request (each costs a full generation)
MAX_SIDE = 4096


def _normalise_combine(name: str) -> str:
    """Accept the CLI spelling ("norm-average") for the node's ("norm average")."""
    return name.replace("-", " ").replace("_", " ").strip()


def check_pick(pick: str | int) -> str | int:
    """A face choice: 'largest', 'score' or a non-negative index (left to right)."""
    if isinstance(pick, int) or (isinstance(pick, str) and pick.isdigit()):
        index = int(pick)
        if index < 0:
            raise ParameterError("pick", f"face index {index} must be >= 0")
        return index
    return check_choice("pick", pick, FACE_PICKS)


def check_best_of(value: int) -> int:
    """1..MAX_BEST_OF candidates; anything else is a one-line error naming best_of."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BEST_OF:
        raise ParameterError("best_of", f"{value!r} must be a whole number from 1 to {MAX_BEST_OF}")
    return value


@dataclass
class LoraSpec:
    """An extra LoRA (e.g. LCM-LoRA) applied to the UNet for this generation."""

    path: str
    strength: float = 1.0

    def __post_init__(self) -> None:
        check_range("lora strength", self.strength, -5.0, 5.0)


@dataclass
class GenerationParams:
    """What every method shares: prompt, sampler, size, seed, device."""

    prompt: str = ""
    negative_prompt: str = ""
    # steps, guidance, scheduler: None means the preset's (when `preset` is set), else 30 / 5.0 / euler
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    vae_tiling: bool = False
    loras: list[LoraSpec] = field(default_factory=list)
    score: bool = True  # face-match score of every output (faces/scoring.py)
    score_models: str | None = None  # a second face pack for scoring (default: the generation's own pack)
    # a few-step preset (engine/fewstep.py): its LoRA or UNet and its sampler settings
    preset: str | None = None
    timestep_spacing: str | None = None  # scheduler override, e.g. "trailing" (None: the base model's)
    prediction_type: str | None = None  # scheduler override, e.g. "sample" for x0-prediction UNets
    eta: float | None = None  # TCD's stochasticity (gamma); None: the scheduler's default
    unet: str | None = None  # a replacement UNet file (diffusers keys) for this generation, e.g. Lightning's
    style: str | None = None  # a named prompt template (idforge/styles.py), applied when encoding the prompt
    best_of: int = 1  # N candidates (seeds seed..seed+N-1) ranked by identity score; the best is returned
    best_of_batch: int = 4  # candidates per denoising pass (the winner is re-run alone when > 1)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ParameterError("prompt", "must be a string")
        self._apply_preset()
        check_range("steps", self.steps, 1, 200)
        check_range("guidance", self.guidance, 0.0, 30.0)
        self.scheduler = check_choice("scheduler", self.scheduler.lower().replace("-", "_"), SCHEDULERS)
        if self.seed is not None:
            check_range("seed", self.seed, 0, MAX_SEED)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            check_range(name, value, 64, MAX_SIDE)
            if value % 8:
                raise ParameterError(name, f"{value} must be a multiple of 8")
        check_range("num_images", self.num_images, 1, 64)
        if self.style is not None:
            from idforge.styles import get_style

            self.style = get_style(self.style).name
        check_best_of(self.best_of)
        check_range("best_of_batch", self.best_of_batch, 1, MAX_BEST_OF)
        if self.best_of > 1 and self.num_images != 1:
            raise ParameterError("best_of", f"best-of-{self.best_of} returns one image; num_images must be 1")
        if self.best_of > 1 and not self.score:
            raise ParameterError("best_of", "best-of-N ranks by the identity score; scoring cannot be off")
        self.dtype = check_choice("dtype", self.dtype, DTYPES)
        if self.timestep_spacing is not None:
            check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.prediction_type is not None:
            check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if self.eta is not None:
            check_range("eta", self.eta, 0.0, 1.0)
        self.loras = [lora if isinstance(lora, LoraSpec) else LoraSpec(**lora) for lora in self.loras]

    def _apply_preset(self) -> None:
        """Fill what the preset decides (fields left at None); with no preset, the plain defaults."""
        if self.preset is None:
            self.steps = DEFAULT_STEPS if self.steps is None else self.steps
            self.guidance = DEFAULT_GUIDANCE if self.guidance is None else self.guidance
            self.scheduler = DEFAULT_SCHEDULER if self.scheduler is None else self.scheduler
            return
        from idforge.engine.fewstep import get_few_step_preset

        preset = get_few_step_preset(self.preset)
        self.preset = preset.name
        for name in ("steps", "guidance", "scheduler", "timestep_spacing", "prediction_type", "eta"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        if preset.kind == "unet" and self.unet is None:
            self.unet = preset.model

    def preset_loras(self) -> list[LoraSpec]:
        """The extra LoRAs of this generation: the user's, plus the preset's LoRA (kept apart so that
        dataclasses.replace, which re-runs __post_init__, never adds it twice)."""
        if self.preset is None:
            return list(self.loras)
        from idforge.engine.fewstep import get_few_step_preset

        preset = get_few_step_preset(self.preset)
        if preset.kind != "lora":
            return list(self.loras)
        return [LoraSpec(path=preset.model, strength=preset.lora_strength), *self.loras]

    def styled_prompts(self) -> tuple[str, str]:
        """(prompt, negative prompt) as the text encoder gets them: after the style template, if any."""
        from idforge.styles import apply_style

        return apply_style(self.style, self.prompt, self.negative_prompt)

    def recipe_extras(self) -> dict[str, Any]:
        """What the recipe records beside the fields: the styled prompts and the preset's settings."""
        extras: dict[str, Any] = {}
        if self.style not in (None, "none"):
            prompt, negative = self.styled_prompts()
            extras |= {"styled_prompt": prompt, "styled_negative_prompt": negative}
        if self.preset is not None:
            from idforge.engine.fewstep import get_few_step_preset

            extras["preset_settings"] = get_few_step_preset(self.preset).to_json()
        return extras

    @property
    def do_cfg(self) -> bool:
        """Classifier-free guidance is skipped at guidance <= 1 (as diffusers does): half the UNet work."""
        return self.guidance > 1.0  # type: ignore[operator]


@dataclass
class InstantIDParams:
    """Every control of ComfyUI's "Apply InstantID Advanced" (seed 000) plus the official demo's extras."""

    ip_weight: float = 0.8
    cn_strength: float = 0.8
    start_at: float = 0.0
    end_at: float = 1.0
    noise: float = 0.0
    combine_embeds: str = "average"
    enhance_face_region: bool = False
    pick: str | int = "largest"
    det_size: int = 640

    def __post_init__(self) -> None:
        check_range("ip_weight", self.ip_weight, 0.0, 3.0)
        check_range("cn_strength", self.cn_strength, 0.0, 10.0)
        check_range("start_at", self.start_at, 0.0, 1.0)
        check_range("end_at", self.end_at, 0.0, 1.0)
        if self.end_at < self.start_at:
            raise ParameterError("end_at", f"{self.end_at} is before start_at {self.start_at}")
        check_range("noise", self.noise, 0.0, 1.0)
        self.combine_embeds = check_choice(
            "combine_embeds", _normalise_combine(self.combine_embeds), INSTANTID_COMBINE
        )
        self.pick = check_pick(self.pick)
        check_range("det_size", self.det_size, 64, 2048)


REGION_NAMES = ("left", "right", "top", "bottom")
MAX_PERSONS = 8


@dataclass
class Person:
    """One person of a multi-person image: face image(s), own strengths and window, and one region.

    The region is exactly one of `region` (left | right | top | bottom: that half of the image), `box`
    (x1, y1, x2, y2 in output pixels) or `mask` (an image; white or opaque = the person's area, resized to the
    output). Strengths and window left at None take the request's InstantID values.
    """

    faces: Sequence[ImageSource]
    region: str | None = None
    box: tuple[int, int, int, int] | None = None
    mask: ImageSource | None = None
    ip_weight: float | None = None
    cn_strength: float | None = None
    start_at: float | None = None
    end_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.faces, str | bytes) or not isinstance(self.faces, Sequence):
            self.faces = [self.faces]
        self.faces = list(self.faces)
        given = [name for name in ("region", "box", "mask") if getattr(self, name) is not None]
        if len(given) != 1:
            problem = "no region given" if not given else f"several regions given ({', '.join(given)})"
            raise ParameterError(
                "region", f"{problem}; give one: region=left|right|top|bottom, box=x1:y1:x2:y2 or mask=IMAGE"
            )
        if self.region is not None:
            self.region = check_choice("region", str(self.region).strip().lower(), REGION_NAMES)
        if self.box is not None:
            self.box = _check_box(self.box)
        for name, low, high in (("ip_weight", 0.0, 3.0), ("cn_strength", 0.0, 10.0)):
            value = getattr(self, name)
            if value is not None:
                check_range(name, float(value), low, high)
        for name in ("start_at", "end_at"):
            value = getattr(self, name)
            if value is not None:
                check_range(name, float(value), 0.0, 1.0)

    def region_text(self) -> str:
        """How the region was given, for messages and the recipe."""
        if self.region is not None:
            return self.region
        if self.box is not None:
            return "box " + ":".join(str(v) for v in self.box)
        return f"mask {image_name(self.mask, '<image>')}"


def _check_box(box: Sequence[Any]) -> tuple[int, int, int, int]:
    values = list(box)
    if len(values) != 4:
        raise ParameterError("box", f"expected 4 numbers x1:y1:x2:y2, got {len(values)}")
    try:
        x1, y1, x2, y2 = (int(round(float(v))) for v in values)
    except (TypeError, ValueError):
        raise ParameterError("box", f"{values!r} are not numbers x1:y1:x2:y2") from None
    if x2 <= x1 or y2 <= y1:
        raise ParameterError("box", f"{x1}:{y1}:{x2}:{y2} is empty (need x1 < x2 and y1 < y2)")
    return x1, y1, x2, y2


def params_to_dict(*objects: Any) -> dict[str, Any]:
    """Flatten parameter objects into one JSON-able dict for metadata."""
    merged: dict[str, Any] = {}
    for obj in objects:
        merged.update(asdict(obj))
        if hasattr(obj, "recipe_extras"):
            merged.update(obj.recipe_extras())
    return merged
