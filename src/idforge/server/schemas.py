"""Response bodies of every endpoint (the request bodies come from the method registry, methods/body.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from idforge.methods.body import MethodBody, RequestFieldError
from idforge.methods.faceid.body import FaceIDBody
from idforge.methods.fields import IMAGE_HELP
from idforge.methods.insta_depth.body import InstaDepthBody
from idforge.methods.instantid.body import InstantIDBody, PersonBody
from idforge.methods.registry import methods
from idforge.server.states import CancelAction, DeliveryStatus, JobStatus

__all__ = [
    "IMAGE_HELP",
    "FaceIDBody",
    "InstaDepthBody",
    "InstantIDBody",
    "PersonBody",
    "RequestFieldError",
]


# The request bodies live with their methods (methods/<name>/body.py); the registry says which is whose.
METHOD_BODIES: dict[str, type[MethodBody]] = {method.name: method.body for method in methods()}


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
