"""FaceID's request body: the controls of "IPAdapter FaceID Batch" (seed 001)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from idforge.identity.attention import ScalingMode
from idforge.identity.embeds import FaceIDCombine
from idforge.identity.weight_types import WeightType
from idforge.methods import fields
from idforge.methods.body import MethodBody
from idforge.methods.fields import IDENTITY_DEFAULT_HELP, IMAGE_HELP
from idforge.methods.instantid.body import PersonBody

FACEID_ADAPTERS = Literal[
    "faceid-sdxl",
    "faceid-plusv2-sdxl",
    "faceid-portrait-sdxl",
    "faceid-portrait-sdxl-unnorm",
    "faceid-sd15",
    "faceid-plus-sd15",
    "faceid-plusv2-sd15",
    "faceid-portrait-v11-sd15",
]
WEIGHT_TYPE_NAMES = WeightType  # the node's 15 names, one source of truth


class FaceIDBody(MethodBody):
    """IP-Adapter FaceID (seed 001, IPAdapter FaceID Batch)."""

    num_inference_steps: int = fields.steps(30)
    guidance_scale: float = fields.guidance(7.5)
    face_image: str | None = fields.reference_face()
    extra_face_images: list[str] = Field(
        default_factory=list,
        max_length=7,
        description="More references: combined, or one per output in batch",
    )
    persons: list[PersonBody] = fields.persons(
        "one FaceID adapter each, masked to its region (ip_weight = its weight; cn_strength is refused)"
    )
    negative_image: str | None = Field(None, description=f"image_negative for the CLIP branch: {IMAGE_HELP}")
    mask_image: str | None = Field(None, description=f"attn_mask: {IMAGE_HELP}")
    adapter: FACEID_ADAPTERS = Field("faceid-plusv2-sdxl", description="which ip-adapter-faceid checkpoint")
    weight: float | None = Field(None, ge=-1, le=3, description=f"default 1, {IDENTITY_DEFAULT_HELP}")
    weight_faceidv2: float = Field(1.0, ge=-1, le=5, description="plusv2 only")
    weight_type: WEIGHT_TYPE_NAMES = Field("linear")
    combine_embeds: FaceIDCombine = Field("concat")
    start_at: float = Field(0.0, ge=0, le=1)
    end_at: float = Field(1.0, ge=0, le=1)
    embeds_scaling: ScalingMode = Field("V only")
    lora_strength: float = Field(0.6, ge=-4, le=4, description="FaceID LoRA strength (faceid, plus, plusv2)")
    batch: bool = Field(
        False, description="unfold: reference i conditions output i; outputs = max(num_images, references)"
    )
    num_images: int = Field(1, ge=1, le=8, description="images to generate (each delivered image is charged)")
