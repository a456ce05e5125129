"""POST /v1/preview/faces and /v1/preview/depth: the studio's free previews (server/previews.py does the work on
its CPU-only engine, in the thread pool). Authenticated like every endpoint; they cost nothing.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from idforge.server.deps import Auth, State
from idforge.server.errors_http import ERROR_RESPONSES
from idforge.server.previews import (
    DepthPreviewBody,
    DepthPreviewResponse,
    FacesPreviewBody,
    FacesPreviewResponse,
    PreviewService,
)

router = APIRouter(
    prefix="/v1/preview",
    tags=["previews"],
    responses={400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401]},
)


def _preview(
    name: str,
    body_type: type[BaseModel],
    response_model: type[BaseModel],
    run: Callable[[PreviewService, Any], BaseModel],
    summary: str,
) -> None:
    """POST /v1/preview/`name`: `run` on the previews' engine, in the thread pool; `body_type` annotates the body
    so that FastAPI validates it and OpenAPI documents it."""

    async def endpoint(body: body_type, key: Auth, state: State):  # type: ignore[valid-type]
        return await run_in_threadpool(run, state.previews, body)

    router.add_api_route(
        f"/{name}",
        endpoint,
        methods=["POST"],
        name=f"preview_{name}",
        response_model=response_model,
        summary=summary,
    )


_preview(
    "faces",
    FacesPreviewBody,
    FacesPreviewResponse,
    PreviewService.faces,
    "Free preview: faces found in each reference (boxes, the one used), the pose face, the keypoint image",
)
_preview(
    "depth",
    DepthPreviewBody,
    DepthPreviewResponse,
    PreviewService.depth,
    "Free preview: the depth map Insta Depth will use for this pose image, at the output size",
)
