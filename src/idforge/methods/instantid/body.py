"""InstantID's request body: the controls of "Apply InstantID Advanced" (seed 000), several persons, and
Segmind's InstantID field names (SPEC.md section 6) declared as aliases of ours."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from idforge.identity.embeds import InstantIDCombine
from idforge.methods import fields
from idforge.methods.body import MethodBody
from idforge.methods.fields import IDENTITY_DEFAULT_HELP, IMAGE_HELP, MAX_STEPS, MIN_STEPS
from idforge.methods.persons import RegionName


class PersonBody(BaseModel):
    """One person of several in an InstantID image: its faces, its own strengths and window, and one region."""

    model_config = ConfigDict(extra="forbid")

    face_image: str = Field(..., description=f"This person's reference face: {IMAGE_HELP}")
    extra_face_images: list[str] = Field(
        default_factory=list, max_length=4, description="More references of this person, combined"
    )
    region: RegionName | None = Field(None, description="that half of the image")
    box: list[int] | None = Field(
        None, min_length=4, max_length=4, description="[x1, y1, x2, y2] in output pixels"
    )
    mask_image: str | None = Field(None, description=f"white (or opaque) = this person's area: {IMAGE_HELP}")
    ip_weight: float | None = Field(None, ge=0, le=3, description="default: the request's ip_weight")
    cn_strength: float | None = Field(None, ge=0, le=10, description="default: the request's cn_strength")
    start_at: float | None = Field(None, ge=0, le=1, description="default: the request's start_at")
    end_at: float | None = Field(None, ge=0, le=1, description="default: the request's end_at")

    @model_validator(mode="after")
    def _one_region(self) -> PersonBody:
        given = [name for name in ("region", "box", "mask_image") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of region, box or mask_image (given: {', '.join(given) or 'none'})"
            )
        return self


class InstantIDBody(MethodBody):
    """InstantID (seed 000, Apply InstantID Advanced)."""

    # Segmind's names: a body that uses one is a Segmind body, so what it leaves out takes Segmind's defaults
    # (10 steps, guidance 5, enhance_face_region true, base64 false: a JPEG body, as the hosted API answers).
    ALIASES: ClassVar[dict[str, str]] = {
        "samples": "num_images",
        "steps": "num_inference_steps",
        "guidance": "guidance_scale",
        "identity_strength": "cn_strength",
        "adapter_strength": "ip_weight",
    }
    ALIAS_DEFAULTS: ClassVar[dict[str, Any]] = {
        "num_images": 1,
        "num_inference_steps": 10,
        "guidance_scale": 5.0,
        "enhance_face_region": True,
        "base64": False,
    }
    ALIAS_SOURCE: ClassVar[str] = "Segmind"

    num_inference_steps: int = fields.steps(30)
    guidance_scale: float = fields.guidance(5.0)
    face_image: str | None = fields.reference_face()
    extra_face_images: list[str] = Field(
        default_factory=list, max_length=4, description="More references of the same person, combined"
    )
    persons: list[PersonBody] = fields.persons(
        "each acting only in its region (pose_image gives each person the face at its place)"
    )
    pose_image: str | None = Field(None, description=f"Photo whose face gives the keypoints: {IMAGE_HELP}")
    kps_image: str | None = Field(None, description=f"An already drawn keypoint image: {IMAGE_HELP}")
    mask_image: str | None = Field(None, description=f"Restricts IP attention and IdentityNet: {IMAGE_HELP}")
    pose_fallback: bool = Field(
        False, description="use the reference keypoints when the pose image has no face"
    )
    ip_weight: float | None = Field(
        None, ge=0, le=3, description=f"IP attention weight (default 0.8, {IDENTITY_DEFAULT_HELP})"
    )
    cn_strength: float | None = Field(
        None, ge=0, le=10, description=f"IdentityNet strength (default 0.8, {IDENTITY_DEFAULT_HELP})"
    )
    start_at: float = Field(0.0, ge=0, le=1, description="start of the schedule window")
    end_at: float = Field(1.0, ge=0, le=1, description="end of the schedule window")
    noise: float = Field(0.0, ge=0, le=1, description="noise in the unconditional face embedding")
    combine_embeds: InstantIDCombine = Field("average")
    enhance_face_region: bool = Field(
        False, description="limit IdentityNet to the face box (default true with Segmind's field names)"
    )
    num_images: int = Field(1, ge=1, le=4, description="images to generate (each delivered image is charged)")
    base64: bool = Field(
        True,
        description="true: JSON with the base64 JPEG; false: the image/jpeg bytes as the body "
        "(default false with Segmind's field names)",
    )
    samples: int | None = Field(None, ge=1, le=4, description="(Segmind's name) = num_images; default 1")
    steps: int | None = Field(
        None, ge=MIN_STEPS, le=MAX_STEPS, description="(Segmind's name) = num_inference_steps; default 10"
    )
    guidance: float | None = Field(
        None, ge=1, le=25, description="(Segmind's name) = guidance_scale; default 5"
    )
    identity_strength: float | None = Field(
        None, ge=0, le=1, description="(Segmind's name) = cn_strength (IdentityNet); default 0.8"
    )
    adapter_strength: float | None = Field(
        None, ge=0, le=1, description="(Segmind's name) = ip_weight (image adapter); default 0.8"
    )
