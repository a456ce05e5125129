"""A few-step LoRA in a workflow (SDXL-Lightning, Hyper-SD, LCM) runs as idforge's few-step preset for it.

ComfyUI users load these LoRAs with a LoraLoader and set the KSampler as the model card says (Lightning 2-step:
2 steps, euler + sgm_uniform, cfg 1). idforge's preset (engine/fewstep.py) is that card: its LoRA, scheduler with
trailing timesteps, steps and guidance. So a LoRA whose file is a preset's, at the preset's strength, becomes
`preset`; the KSampler's steps and cfg stay explicit only where they differ from the card, and its sampler stays
only when it is not the preset's. Below 4 steps the preset is the only way in (the bodies' range is 4..100).
"""

from __future__ import annotations

from pathlib import PurePath

from idforge.comfy.generation import SamplerInputs
from idforge.comfy.values import Lora
from idforge.engine.fewstep import FEW_STEP_PRESETS, FewStepPreset
from idforge.models.presets import find_preset

# KSampler sampler_name -> the idforge scheduler a preset names when it means the same sampler
PRESET_SAMPLERS = {"euler": "euler", "ddim": "ddim", "lcm": "lcm"}


def few_step_lora(loras: tuple[Lora, ...] | list[Lora]) -> tuple[FewStepPreset, Lora] | None:
    """The first LoRA that is a few-step preset's file at that preset's strength, with the preset."""
    for lora in loras:
        model = find_preset(PurePath(lora.name).name)
        if model is None or model.role != "lora":
            continue
        for preset in FEW_STEP_PRESETS.values():
            if (
                preset.kind == "lora"
                and preset.model == model.name
                and lora.strength_model == preset.lora_strength
            ):
                return preset, lora
    return None


def use_preset(inputs: SamplerInputs, preset: FewStepPreset, lora: Lora) -> bool:
    """Set `preset` on the body and leave the card's steps and guidance to it; True when the KSampler's sampler is
    the preset's (so the preset's scheduler, with its timestep spacing, runs)."""
    inputs.set("preset", preset.name, lora.node, "lora_name", f"preset (few-step {preset.name})")
    values = inputs.values
    if int(values["steps"]) == preset.steps:
        _leave_to_preset(inputs, "num_inference_steps", "steps", preset.name)
    if float(values["cfg"]) <= 1.0 and preset.guidance <= 1.0:  # both skip classifier-free guidance
        _leave_to_preset(inputs, "guidance_scale", "cfg", preset.name)
    same_sampler = PRESET_SAMPLERS.get(values["sampler_name"]) == preset.scheduler
    if same_sampler:
        inputs.say(inputs.node, "sampler_name/scheduler", "scheduler", f"the preset's ({preset.scheduler})")
    return same_sampler


def _leave_to_preset(inputs: SamplerInputs, param: str, name: str, preset: str) -> None:
    inputs.params.pop(param, None)
    inputs.sources.pop(param, None)
    inputs.say(inputs.node, name, f"{param} (the {preset} preset's)", inputs.values[name])
