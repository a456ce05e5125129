"""Scheduler choice by name, built from the base model's own scheduler config."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)

from idforge.engine.params import SCHEDULERS
from idforge.errors import check_choice


class Scheduler(Protocol):
    """What the denoising loop uses of a diffusers scheduler. diffusers' SchedulerMixin declares none of it, and
    the signatures differ per scheduler (DDIM's and TCD's step take eta, Euler's s_churn, ...), so the methods
    stay open."""

    @property
    def timesteps(self) -> torch.Tensor: ...

    @property
    def config(self) -> Any: ...

    @property
    def init_noise_sigma(self) -> float | torch.Tensor: ...

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Any: ...

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None: ...

    def scale_model_input(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...

    def step(self, *args: Any, **kwargs: Any) -> Any: ...


_SCHEDULER_CLASSES: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": (DDIMScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}


def make_scheduler(
    name: str,
    base_config: dict[str, Any],
    *,
    timestep_spacing: str | None = None,
    prediction_type: str | None = None,
) -> Scheduler:
    """A fresh scheduler of the named kind with the base model's betas and spacing (one per call: schedulers keep
    state); few-step presets override the spacing ("trailing") and the prediction type ("sample" for x0 UNets)."""
    check_choice("scheduler", name, SCHEDULERS)
    cls, overrides = _SCHEDULER_CLASSES[name]
    settings = dict(overrides)
    if timestep_spacing is not None:
        settings["timestep_spacing"] = timestep_spacing
    if prediction_type is not None:
        settings["prediction_type"] = prediction_type
    return cls.from_config(dict(base_config), **settings)


def step_options(name: str, eta: float | None) -> dict[str, Any]:
    """Extra keyword arguments of `scheduler.step` (TCD's eta)."""
    return {"eta": eta} if name == "tcd" and eta is not None else {}
