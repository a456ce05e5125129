"""Insta Depth's request body: exactly the fields of seed 002, plus idforge extensions marked as such."""

from __future__ import annotations

from pydantic import Field

from idforge.methods.body import MethodBody
from idforge.methods.fields import IMAGE_HELP


class InstaDepthBody(MethodBody):
    """Seed 002: Insta Depth (InstantID + depth ControlNet)."""

    face_image: str = Field(..., description=f"Face Image: {IMAGE_HELP}")
    pose_image: str = Field(..., description=f"Pose Image: {IMAGE_HELP}")
    ip_weight: float | None = Field(
        None, ge=0, le=3, description="(idforge extension) IP attention weight; default 0.8, or the preset's"
    )
    cn_strength: float | None = Field(
        None,
        ge=0,
        le=10,
        description="(idforge extension) IdentityNet strength; default 0.8, or the preset's",
    )
    start_at: float = Field(0.0, ge=0, le=1, description="(idforge extension) InstantID window start")
    end_at: float = Field(1.0, ge=0, le=1, description="(idforge extension) InstantID window end")
    noise: float = Field(
        0.0, ge=0, le=1, description="(idforge extension) noise in the unconditional face embedding"
    )
    enhance_face_region: bool = Field(
        False, description="(idforge extension) limit IdentityNet to the face box"
    )
    depth_strength: float = Field(
        0.5, ge=0, le=10, description="(idforge extension) depth ControlNet strength"
    )
    depth_start_at: float = Field(0.0, ge=0, le=1, description="(idforge extension) depth window start")
    depth_end_at: float = Field(1.0, ge=0, le=1, description="(idforge extension) depth window end")
    depth_map: str | None = Field(
        None, description=f"(idforge extension) use this depth map instead of estimating one: {IMAGE_HELP}"
    )
    return_depth_map: bool = Field(
        False, description="(idforge extension) with base64 true, also return the depth map as `depth_map`"
    )
