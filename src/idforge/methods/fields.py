"""Body fields that several methods declare alike (`fields.steps(30)`, `fields.persons(...)`): their ranges, help
and defaults' wording in one place, so the bodies differ only where the methods do."""

from __future__ import annotations

from typing import Any

from pydantic import Field

IMAGE_HELP = "base64 (optionally a data URL, data:image/...;base64,...) or an http(s) URL"
IDENTITY_DEFAULT_HELP = "or the preset's recommendation"

# Every method's step range (seed 002): fewer than 4 steps is a few-step model's territory, set by its preset.
MIN_STEPS, MAX_STEPS = 4, 100


def steps(default: int, why: str = "") -> Any:
    """`num_inference_steps` in every method's range; `why` says where a method's default comes from."""
    detail = f" ({why})" if why else ""
    return Field(
        default,
        ge=MIN_STEPS,
        le=MAX_STEPS,
        description=f"Number of denoising steps{detail}. Affects pricing.",
    )


def guidance(default: float) -> Any:
    return Field(default, ge=1, le=15, description="Scale for classifier-free guidance")


def reference_face() -> Any:
    """`face_image` of a method that also takes several people (`persons`) instead."""
    return Field(None, description=f"Reference face (required unless `persons` is given): {IMAGE_HELP}")


def persons(how: str) -> Any:
    """`persons` (an idforge extension): `how` each person acts in the image."""
    from idforge.methods.persons import MAX_PERSONS

    return Field(
        default_factory=list,
        max_length=MAX_PERSONS,
        description=f"(idforge extension) several people in one image, {how}; replaces face_image, "
        "extra_face_images and mask_image",
    )
