"""PuLID's request body: the controls of cubiq's ApplyPulid / ApplyPulidAdvanced, with the official defaults."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from idforge.methods import fields
from idforge.methods.body import MethodBody
from idforge.methods.fields import IDENTITY_DEFAULT_HELP, IMAGE_HELP
from idforge.methods.instantid.body import PersonBody

PULID_MODELS = Literal["pulid-v1.1", "pulid-v1", "pulid-comfyui"]
PulidMethod = Literal["fidelity", "style", "neutral"]
PulidProjection = Literal["ortho_v2", "ortho", "none"]
PULID_METHODS: tuple[str, ...] = get_args(PulidMethod)
PULID_PROJECTIONS: tuple[str, ...] = get_args(PulidProjection)


class PulidBody(MethodBody):
    """PuLID (ApplyPulid / ApplyPulidAdvanced)."""

    num_inference_steps: int = fields.steps(
        25, "v1.1's non-distilled default; presets pulid-v1 and pulid-v1.1-lightning set 4 and 5"
    )
    guidance_scale: float = fields.guidance(7.0)
    face_image: str | None = fields.reference_face()
    extra_face_images: list[str] = Field(
        default_factory=list,
        max_length=3,
        description="Auxiliary references (the official demos take 3): v1.1 encodes all in one pass, v1 appends "
        "their first 5 ID tokens (all 10 with id_mix)",
    )
    persons: list[PersonBody] = fields.persons(
        "one ID branch each, masked to its region (ip_weight = its weight; cn_strength is refused)"
    )
    mask_image: str | None = Field(
        None, description=f"attn_mask: restrict the ID branch to this area: {IMAGE_HELP}"
    )
    model: PULID_MODELS = Field(
        "pulid-v1.1",
        description="which PuLID file: pulid_v1.1.safetensors, pulid_v1.bin, or ComfyUI's "
        "ip-adapter_pulid_sdxl_fp16.safetensors (v1)",
    )
    method: PulidMethod = Field(
        "fidelity",
        description="fidelity: ortho_v2 with 8 zero tokens; style: ortho with 16; neutral: plain addition, none",
    )
    weight: float | None = Field(
        None, ge=-1, le=5, description=f"id_scale of the ID branch (default 0.8, {IDENTITY_DEFAULT_HELP})"
    )
    start_at: float = Field(0.0, ge=0, le=1, description="start of the schedule window")
    end_at: float = Field(1.0, ge=0, le=1, description="end of the schedule window")
    projection: PulidProjection | None = Field(
        None, description="(Advanced) override the method's projection"
    )
    fidelity: int | None = Field(
        None,
        ge=0,
        le=32,
        description="(Advanced) zero tokens padded to the ID tokens; lower = closer to the face",
    )
    noise: float = Field(
        0.0, ge=0, le=1, description="(Advanced) uniform noise instead of zeros as the negative encoder input"
    )
    id_mix: bool = Field(
        False, description="v1: auxiliary references give all their tokens (mix two identities)"
    )
    num_images: int = Field(1, ge=1, le=4, description="images to generate (each delivered image is charged)")
