"""Few-step presets: a distilled LoRA or UNet with the scheduler, steps and guidance its model card states.

Settings (SPEC.md section 8):
- `lcm`: LCM-LoRA SDXL, LCMScheduler; the card says 2-8 steps at guidance 1-2, InstantID's demo uses 5 steps at
  1.5: we take the demo's 5 / 1.5;
- `lightning-N` (N = 2, 4, 8): SDXL-Lightning's N-step LoRA, `lightning-N-unet` its full UNet; Euler with
  `timestep_spacing="trailing"`, exactly N steps, guidance 0; `lightning-1`: the 1-step UNet, which predicts x0
  (`prediction_type="sample"`);
- `hyper-N` (N = 2, 4, 8): Hyper-SD's N-step SDXL LoRA, DDIM trailing, guidance 0; `hyper-1`: the 1-step LoRA
  with TCD at eta 1.0; `hyper-8-cfg` / `hyper-12-cfg`: the CFG-preserving LoRAs, DDIM trailing at guidance 5
  (the card: 5-8).
- PuLID's official samplers (ToTheBeginning/PuLID): `pulid-v1`: the SDXL-Lightning 4-step UNet with DPM++ 2M
  (diffusers' DPMSolverMultistep, `timestep_spacing="trailing"`), 4 steps, guidance 1.2 (pipeline.py);
  `pulid-v1.1-lightning`: on a Lightning base checkpoint (the official default Lykon/dreamshaper-xl-lightning),
  5 steps at guidance 2 with k-diffusion's dpmpp_sde on Karras sigmas; ours is diffusers' DPM++ 2M SDE on Karras
  sigmas (the single-step dpmpp_sde needs torchsde, which we do not ship); `pulid-v1.1`: non-distilled bases,
  dpmpp_2m on Karras sigmas, 25 steps, guidance 7 (app_v1_1.py). Both v1.1 presets bring no file (`kind`
  "sampler"): the base is the model. Their `pulid_weight` is the official id_scale default, 0.8.
Identity strengths: nobody publishes strengths tuned for few steps. Ours, as starting points (run
benchmarks/identity.py with your models to tune them): InstantID's defaults 0.8 / 0.8 for LCM, and a stronger
IP weight (1.0) for the 1-8 step distillations, where identity has fewer steps to take hold. The CLI applies them
unless --ip-weight / --cn-strength / --weight are given; the recipe records them either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from idforge.errors import ParameterError


@dataclass(frozen=True)
class FewStepPreset:
    name: str
    model: str  # a models.presets name: role "lora" or "unet" ("" for kind "sampler")
    kind: str  # "lora" | "unet" | "sampler" (settings only: the base is already the distilled model)
    scheduler: str
    steps: int
    guidance: float
    timestep_spacing: str | None = None
    prediction_type: str | None = None
    eta: float | None = None
    lora_strength: float = 1.0
    identity: dict[str, float] = field(
        default_factory=dict
    )  # recommended: ip_weight, cn_strength, faceid_weight
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FEW_STEP_IDENTITY = {"ip_weight": 1.0, "cn_strength": 0.8, "faceid_weight": 1.0}
_LCM_IDENTITY = {"ip_weight": 0.8, "cn_strength": 0.8, "faceid_weight": 1.0}
_PULID_IDENTITY = {"ip_weight": 1.0, "cn_strength": 0.8, "faceid_weight": 1.0, "pulid_weight": 0.8}


def _build() -> dict[str, FewStepPreset]:
    presets = [
        FewStepPreset(
            "lcm",
            "lcm-lora-sdxl",
            "lora",
            "lcm",
            5,
            1.5,
            identity=_LCM_IDENTITY,
            source="LCM-LoRA card: 2-8 steps, guidance 1-2; InstantID demo: 5 steps, 1.5",
        ),
        FewStepPreset(
            "lightning-1",
            "sdxl-lightning-1step-unet",
            "unet",
            "euler",
            1,
            0.0,
            timestep_spacing="trailing",
            prediction_type="sample",
            identity=_FEW_STEP_IDENTITY,
            source="SDXL-Lightning card: 1-step UNet is x0-prediction, Euler trailing, guidance 0",
        ),
    ]
    for steps in (2, 4, 8):
        for kind, suffix in (("lora", ""), ("unet", "-unet")):
            presets.append(
                FewStepPreset(
                    f"lightning-{steps}{suffix}",
                    f"sdxl-lightning-{steps}step-{kind}",
                    kind,
                    "euler",
                    steps,
                    0.0,
                    timestep_spacing="trailing",
                    identity=_FEW_STEP_IDENTITY,
                    source=f"SDXL-Lightning card: Euler trailing, exactly {steps} steps, guidance 0",
                )
            )
        presets.append(
            FewStepPreset(
                f"hyper-{steps}",
                f"hyper-sdxl-{steps}steps-lora",
                "lora",
                "ddim",
                steps,
                0.0,
                timestep_spacing="trailing",
                identity=_FEW_STEP_IDENTITY,
                source=f"Hyper-SD card: DDIM trailing, {steps} steps, guidance 0",
            )
        )
    presets.append(
        FewStepPreset(
            "hyper-1",
            "hyper-sdxl-1step-lora",
            "lora",
            "tcd",
            1,
            0.0,
            eta=1.0,
            identity=_FEW_STEP_IDENTITY,
            source="Hyper-SD card: 1-step LoRA with TCD, eta 1.0, guidance 0",
        )
    )
    for steps in (8, 12):
        presets.append(
            FewStepPreset(
                f"hyper-{steps}-cfg",
                f"hyper-sdxl-{steps}steps-cfg-lora",
                "lora",
                "ddim",
                steps,
                5.0,
                timestep_spacing="trailing",
                identity=_LCM_IDENTITY,
                source=f"Hyper-SD card: CFG-preserving {steps}-step LoRA, DDIM trailing, guidance 5-8",
            )
        )
    presets += [
        FewStepPreset(
            "pulid-v1",
            "sdxl-lightning-4step-unet",
            "unet",
            "dpmpp_2m",
            4,
            1.2,
            timestep_spacing="trailing",
            identity=_PULID_IDENTITY,
            source="PuLID v1 pipeline.py: SDXL-Lightning 4-step UNet, DPMSolverMultistep trailing, 4 steps, CFG 1.2",
        ),
        FewStepPreset(
            "pulid-v1.1-lightning",
            "",
            "sampler",
            "dpmpp_2m_sde_karras",
            5,
            2.0,
            identity=_PULID_IDENTITY,
            source="PuLID v1.1 app_v1_1.py: Lightning base, dpmpp_sde (Karras sigmas), 5 steps, CFG 2",
        ),
        FewStepPreset(
            "pulid-v1.1",
            "",
            "sampler",
            "dpmpp_2m_karras",
            25,
            7.0,
            identity=_PULID_IDENTITY,
            source="PuLID v1.1 app_v1_1.py: non-distilled base, dpmpp_2m (Karras sigmas), 25 steps, CFG 7",
        ),
    ]
    return {preset.name: preset for preset in presets}


FEW_STEP_PRESETS: dict[str, FewStepPreset] = _build()


def get_few_step_preset(name: str) -> FewStepPreset:
    """The preset called `name`, or a one-line ParameterError naming `preset` and listing the known ones."""
    key = name.strip().lower().replace("_", "-")
    if key not in FEW_STEP_PRESETS:
        raise ParameterError(
            "preset", f"unknown preset {name!r}; known presets: {', '.join(FEW_STEP_PRESETS)}"
        )
    return FEW_STEP_PRESETS[key]


def few_step_models(engine: Any, gen: Any) -> dict[str, Any]:
    """Recipe entries for the files a preset (or `unet`) brought in: resolved path and hash."""
    from idforge.engine.hashing import model_hash

    models: dict[str, Any] = {}
    if gen.unet is not None:
        path = engine.resolve("unet", gen.unet)
        models["unet"] = {"name": gen.unet, "source": str(path), "sha256": model_hash(path)}
    if gen.preset is not None:
        preset = get_few_step_preset(gen.preset)
        if preset.kind == "lora":
            path = engine.resolve("lora", preset.model)
            models["preset_lora"] = {
                "name": preset.model,
                "source": str(path),
                "sha256": model_hash(path),
                "strength": preset.lora_strength,
            }
    return models
