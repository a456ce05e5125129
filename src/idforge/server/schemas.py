"""Request bodies of every endpoint, with the defaults and ranges of the seeds (shown in the OpenAPI docs).

`InstaDepthBody` has exactly the fields of seed 002, plus optional idforge extensions marked as such (output
size, returning the depth map). The other methods follow the same conventions (`num_inference_steps`,
`guidance_scale`, `seed` with -1 = random, `base64`), with the parameters of their ComfyUI nodes.
Unknown fields are refused (400 naming them): a misspelt parameter should not be silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from idforge.engine.params import MAX_BEST_OF, MAX_SEED
from idforge.errors import ParameterError
from idforge.identity.attention import SCALING_MODES
from idforge.identity.embeds import FACEID_COMBINE_MODES
from idforge.identity.weight_types import WEIGHT_TYPES
from idforge.methods.instantid.params import INSTANTID_COMBINE
from idforge.methods.persons import MAX_PERSONS, REGION_NAMES
from idforge.server.states import CancelAction, DeliveryStatus, JobStatus
from idforge.styles import STYLES


class RequestFieldError(ParameterError):
    """A request-level problem whose `name` is already the request field (not an engine name to map)."""


IMAGE_HELP = "base64 (optionally a data URL, data:image/...;base64,...) or an http(s) URL"


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=4000, description="Prompt to render")
    negative_prompt: str | None = Field(
        None, max_length=4000, description="Prompts to exclude, eg. 'bad anatomy, bad hands, missing fingers'"
    )
    num_inference_steps: int = Field(
        10, ge=4, le=100, description="Number of denoising steps. Affects pricing."
    )
    guidance_scale: float = Field(3.0, ge=1, le=15, description="Scale for classifier-free guidance")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="Seed for image generation; -1 = random")
    base64: bool = Field(
        True, description="true: JSON with the base64 JPEG; false: the image/jpeg bytes as the body"
    )
    width: int | None = Field(
        None, ge=64, le=2048, multiple_of=8, description="(idforge extension) output width; with height"
    )
    height: int | None = Field(
        None, ge=64, le=2048, multiple_of=8, description="(idforge extension) output height; with width"
    )
    style: str | None = Field(
        None,
        max_length=64,
        description="a style template by name: wraps the prompt and adds to the negative prompt; one of "
        f"{', '.join(STYLES)} (GET /v1/styles shows each template)",
    )
    best_of: int = Field(
        1,
        ge=1,
        le=MAX_BEST_OF,
        description="(idforge) generate N candidates (seeds seed..seed+N-1) and return the one with the best "
        "identity score; the ranking is in the recipe; costs N images",
    )
    preset: str | None = Field(
        None,
        max_length=32,
        description="(idforge) few-step preset: lcm, lightning-1/2/4/8, lightning-N-unet, hyper-1/2/4/8, "
        "hyper-8-cfg, hyper-12-cfg; sets scheduler, steps and guidance unless they are given",
    )
    score_models: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="(idforge) face pack name for the identity score (default: the method's own pack)",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="(/v2 only) http(s) URL that receives the final status body by POST, signed as Standard "
        "Webhooks specify with the key's whsec_ secret; retried with backoff until delivered",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


class InstaDepthBody(_Common):
    """Seed 002: Insta Depth (InstantID + depth ControlNet)."""

    face_image: str = Field(..., description=f"Face Image: {IMAGE_HELP}")
    pose_image: str = Field(..., description=f"Pose Image: {IMAGE_HELP}")
    return_depth_map: bool = Field(
        False, description="(idforge extension) with base64 true, also return the depth map as `depth_map`"
    )


class PersonBody(BaseModel):
    """One person of several in an InstantID image: its faces, its own strengths and window, and one region."""

    model_config = ConfigDict(extra="forbid")

    face_image: str = Field(..., description=f"This person's reference face: {IMAGE_HELP}")
    extra_face_images: list[str] = Field(
        default_factory=list, max_length=4, description="More references of this person, combined"
    )
    region: Literal[REGION_NAMES] | None = Field(None, description="that half of the image")
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


class InstantIDBody(_Common):
    """InstantID (seed 000, Apply InstantID Advanced)."""

    num_inference_steps: int = Field(
        30, ge=4, le=100, description="Number of denoising steps. Affects pricing."
    )
    guidance_scale: float = Field(5.0, ge=1, le=15, description="Scale for classifier-free guidance")
    face_image: str | None = Field(
        None, description=f"Reference face (required unless `persons` is given): {IMAGE_HELP}"
    )
    extra_face_images: list[str] = Field(
        default_factory=list, max_length=4, description="More references of the same person, combined"
    )
    persons: list[PersonBody] = Field(
        default_factory=list,
        max_length=MAX_PERSONS,
        description="(idforge extension) several people in one image, each acting only in its region; replaces "
        "face_image, extra_face_images and mask_image. pose_image gives each person the face at its place",
    )
    pose_image: str | None = Field(None, description=f"Photo whose face gives the keypoints: {IMAGE_HELP}")
    kps_image: str | None = Field(None, description=f"An already drawn keypoint image: {IMAGE_HELP}")
    mask_image: str | None = Field(None, description=f"Restricts IP attention and IdentityNet: {IMAGE_HELP}")
    pose_fallback: bool = Field(
        False, description="use the reference keypoints when the pose image has no face"
    )
    ip_weight: float = Field(0.8, ge=0, le=3, description="IP attention weight")
    cn_strength: float = Field(0.8, ge=0, le=10, description="IdentityNet strength")
    start_at: float = Field(0.0, ge=0, le=1, description="start of the schedule window")
    end_at: float = Field(1.0, ge=0, le=1, description="end of the schedule window")
    noise: float = Field(0.0, ge=0, le=1, description="noise in the unconditional face embedding")
    combine_embeds: Literal[INSTANTID_COMBINE] = Field("average")
    enhance_face_region: bool = Field(
        False, description="limit IdentityNet to the face box (default true with Segmind's field names)"
    )
    num_images: int = Field(1, ge=1, le=4, description="images to generate (each delivered image is charged)")
    base64: bool = Field(
        True,
        description="true: JSON with the base64 JPEG; false: the image/jpeg bytes as the body "
        "(default false with Segmind's field names)",
    )
    # Segmind's InstantID names (SPEC.md section 6), accepted beside ours; one body uses one name per parameter.
    samples: int | None = Field(None, ge=1, le=4, description="(Segmind's name) = num_images; default 1")
    steps: int | None = Field(
        None, ge=4, le=100, description="(Segmind's name) = num_inference_steps; default 10"
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
WEIGHT_TYPE_NAMES = Literal[WEIGHT_TYPES]  # the node's 15 names, one source of truth


class FaceIDBody(_Common):
    """IP-Adapter FaceID (seed 001, IPAdapter FaceID Batch)."""

    num_inference_steps: int = Field(
        30, ge=4, le=100, description="Number of denoising steps. Affects pricing."
    )
    guidance_scale: float = Field(7.5, ge=1, le=15, description="Scale for classifier-free guidance")
    face_image: str = Field(..., description=f"Reference face: {IMAGE_HELP}")
    extra_face_images: list[str] = Field(
        default_factory=list,
        max_length=7,
        description="More references: combined, or one per output in batch",
    )
    negative_image: str | None = Field(None, description=f"image_negative for the CLIP branch: {IMAGE_HELP}")
    mask_image: str | None = Field(None, description=f"attn_mask: {IMAGE_HELP}")
    adapter: FACEID_ADAPTERS = Field("faceid-plusv2-sdxl", description="which ip-adapter-faceid checkpoint")
    weight: float = Field(1.0, ge=-1, le=3)
    weight_faceidv2: float = Field(1.0, ge=-1, le=5, description="plusv2 only")
    weight_type: WEIGHT_TYPE_NAMES = Field("linear")
    combine_embeds: Literal[FACEID_COMBINE_MODES] = Field("concat")
    start_at: float = Field(0.0, ge=0, le=1)
    end_at: float = Field(1.0, ge=0, le=1)
    embeds_scaling: Literal[SCALING_MODES] = Field("V only")
    lora_strength: float = Field(0.6, ge=-4, le=4, description="FaceID LoRA strength (faceid, plus, plusv2)")
    batch: bool = Field(
        False, description="unfold: reference i conditions output i; outputs = max(num_images, references)"
    )
    num_images: int = Field(1, ge=1, le=8, description="images to generate (each delivered image is charged)")


METHOD_BODIES: dict[str, type[_Common]] = {
    "insta-depth": InstaDepthBody,
    "instantid": InstantIDBody,
    "faceid": FaceIDBody,
}


class ImageResponse(BaseModel):
    """base64 = true: the generated image(s) as base64 JPEG."""

    image: str = Field(..., description="base64 JPEG (the first image)")
    images: list[str] = Field(..., description="every generated image, base64 JPEG")
    seed: int
    seeds: list[int]
    mime_type: str = "image/jpeg"
    credits_charged: int
    request_id: str
    warnings: list[str] = []
    timings: dict[str, float] = {}
    depth_map: str | None = Field(None, description="(return_depth_map) base64 JPEG depth map")
    identity: dict[str, Any] | None = Field(None, description="identity score per image (see the v2 result)")


class ErrorResponse(BaseModel):
    status: int
    error: str
    field: str | None = None
    request_id: str | None = None


JobState = JobStatus  # server/states.py


class _JobURLs(BaseModel):
    status_url: str = Field(..., description="absolute URL of GET /v2/requests/{id}/status")
    response_url: str = Field(..., description="absolute URL of GET /v2/requests/{id} (the result)")
    poll_url: str = Field(..., description="the URL to poll (= status_url)")
    cancel_url: str = Field(..., description="absolute URL of POST /v2/requests/{id}/cancel")
    webhooks_url: str = Field(..., description="absolute URL of GET /v2/requests/{id}/webhooks")


class AcceptedResponse(_JobURLs):
    request_id: str
    status: Literal[JobStatus.QUEUED]
    position: int = Field(..., description="place in the queue, 1 = next")
    credits_reserved: int


class JobStatusResponse(_JobURLs):
    request_id: str
    status: JobState
    method: str
    position: int | None = Field(None, description="QUEUED: place in the queue, 1 = next")
    step: int | None = Field(None, description="PROCESSING: denoising steps done")
    total_steps: int | None = None
    error: str | None = Field(None, description="FAILED or CANCELED: what happened")
    field: str | None = Field(None, description="FAILED by bad input: the request field at fault")
    error_status: int | None = Field(None, description="FAILED: the HTTP status /v1 would have answered")
    metrics: dict[str, float] = Field(default_factory=dict, description="timings in seconds")
    credits: int = Field(..., description="credits reserved or charged (0 once failed or canceled)")
    finished_at: float | None = None
    attempts: int = Field(0, description="runs started; more than 1 when a replica died while running it")
    replica: str | None = Field(None, description="the model replica that ran (or runs) the job")


class JobOutputBody(BaseModel):
    image: str = Field(..., description="base64 JPEG (the first image)")
    images: list[str]
    mime_type: str = "image/jpeg"
    depth_map: str | None = Field(None, description="(return_depth_map) base64 JPEG depth map")


class JobResultResponse(JobStatusResponse):
    output: JobOutputBody | None = Field(None, description="COMPLETED: the image(s)")
    seed: int | None = None
    seeds: list[int] | None = None
    recipe: dict[str, Any] | None = Field(None, description="every parameter, seeds and model ids")
    identity: dict[str, Any] | None = Field(
        None,
        description="identity score: {pack, reference, images: [{status: scored, score, face_index, box} | "
        "{status: no_face, score: null, reason, sizes_tried}]}",
    )
    warnings: list[str] | None = None
    credits_charged: int | None = None


class CancelResponse(BaseModel):
    request_id: str
    action: CancelAction = Field(
        ...,
        description="removed from the queue, stopped while running (or stopping), or it had already ended",
    )
    status: JobState
    credits_released: bool


class WebhookDeliveryInfo(BaseModel):
    id: str = Field(..., description="the webhook-id header, the same on every retry")
    url: str
    status: DeliveryStatus
    attempts: int
    created: float
    next_attempt: float | None = None
    last_attempt: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered: float | None = None


class WebhookListResponse(BaseModel):
    request_id: str
    webhook_url: str | None
    deliveries: list[WebhookDeliveryInfo]


class StyleInfo(BaseModel):
    name: str
    description: str
    prompt: str
    negative: str


class HealthResponse(BaseModel):
    status: Literal["loading", "ready", "degraded"]
    ready: bool
    version: str
    loading: str | None = Field(None, description="while loading: what is being loaded")
    unavailable: dict[str, str] = Field(default_factory=dict, description="methods whose models are missing")
    warm_up_s: float | None = None
    queue: dict[str, Any]
    webhooks: dict[str, Any] = Field(default_factory=dict)
    store: str = Field("sqlite", description="the database backend: sqlite or postgresql")
    replicas: list[dict[str, Any]] = Field(
        default_factory=list, description="model replicas: device, state, jobs done, current job"
    )
