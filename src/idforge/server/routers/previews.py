"""POST /v1/preview/faces and /v1/preview/depth: the studio's free previews (server/previews.py does the work on
its CPU-only engine, in the thread pool). Authenticated like every endpoint; they cost nothing.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from idforge.server.deps import Auth, State
from idforge.server.errors_http import ERROR_RESPONSES
from idforge.server.previews import (
    DepthPreviewBody,
    DepthPreviewResponse,
    FacesPreviewBody,
    FacesPreviewResponse,
)

router = APIRouter(
    prefix="/v1/preview",
    tags=["previews"],
    responses={400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401]},
)


@router.post(
    "/faces",
    response_model=FacesPreviewResponse,
    summary="Free preview: faces found in each reference (boxes, the one used), the pose face, the keypoint image",
)
async def preview_faces(body: FacesPreviewBody, key: Auth, state: State):
    return await run_in_threadpool(state.previews.faces, body)


@router.post(
    "/depth",
    response_model=DepthPreviewResponse,
    summary="Free preview: the depth map Insta Depth will use for this pose image, at the output size",
)
async def preview_depth(body: DepthPreviewBody, key: Auth, state: State):
    return await run_in_threadpool(state.previews.depth, body)
