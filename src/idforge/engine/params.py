"""Parameter objects for every generation method, validated on construction.

Ranges and defaults come from the reference nodes (seed 000: Apply InstantID Advanced, seed 001: IPAdapter FaceID
Batch) and from SPEC.md. Validation happens here, before any model is loaded, so a bad request fails fast and costs
nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from idforge.errors import ParameterError, check_choice, check_range

SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "ddim", "lcm", "tcd")


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


DEFAULT_STEPS = 30


DEFAULT_GUIDANCE = 5.0


DEFAULT_SCHEDULER = "euler"


DTYPES = ("auto", "float32", "float16", "bfloat16")


FACE_PICKS = ("largest", "score")


MAX_SEED = 999_999_999_999_999


MAX_BEST_OF = 16  # candidates per best-of-N request (each costs a full generation)


MAX_SIDE = 4096


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
        steps, guidance, scheduler = self.sampler()
        check_range("steps", steps, 1, 200)
        check_range("guidance", guidance, 0.0, 30.0)
        self.scheduler = check_choice("scheduler", scheduler.lower().replace("-", "_"), SCHEDULERS)
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

    def sampler(self) -> tuple[int, float, str]:
        """(steps, guidance, scheduler), which `_apply_preset` filled in: from the preset, else the defaults."""
        if self.steps is None or self.guidance is None or self.scheduler is None:
            raise ParameterError("preset", f"preset {self.preset!r} left steps, guidance or scheduler unset")
        return self.steps, self.guidance, self.scheduler

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
        return self.sampler()[1] > 1.0


def params_to_dict(*objects: Any) -> dict[str, Any]:
    """Flatten parameter objects into one JSON-able dict for metadata."""
    merged: dict[str, Any] = {}
    for obj in objects:
        merged.update(asdict(obj))
        if hasattr(obj, "recipe_extras"):
            merged.update(obj.recipe_extras())
    return merged
