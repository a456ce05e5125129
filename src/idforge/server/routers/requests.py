"""The /v2 job resources (SPEC.md section 6): status, result, cancel and webhook deliveries of a job, each
visible only to the key that submitted it (any other key gets 404); an expired result answers 410.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from idforge.server.contract import result_body, status_body
from idforge.server.deps import Auth, State, own_job
from idforge.server.errors_http import ERROR_RESPONSES
from idforge.server.schemas import (
    CancelResponse,
    ErrorResponse,
    JobResultResponse,
    JobStatusResponse,
    WebhookListResponse,
)
from idforge.server.states import CancelAction

JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    404: {"model": ErrorResponse, "description": "No such request for this key"},
    410: {
        "model": ErrorResponse,
        "description": "The request's result has expired (kept for a limited time)",
    },
}

router = APIRouter()


@router.get(
    "/v2/requests/{request_id}/status",
    response_model=JobStatusResponse,
    responses=JOB_ERRORS,
    summary="Status of a job: QUEUED (position), PROCESSING (step), COMPLETED, FAILED (error), CANCELED",
)
async def job_status(request_id: str, request: Request, key: Auth, state: State):
    return await _job_answer(request_id, request, key, state, status_body)


@router.get(
    "/v2/requests/{request_id}",
    response_model=JobResultResponse,
    responses=JOB_ERRORS,
    summary="Result of a job: the status, and once COMPLETED the output image(s), metrics, seed, recipe",
)
async def job_result(request_id: str, request: Request, key: Auth, state: State):
    return await _job_answer(request_id, request, key, state, result_body)


async def _job_answer(
    request_id: str, request: Request, key: Any, state: Any, body: Callable[..., dict[str, Any]]
) -> Response:
    """The caller's job as `body` renders it (its status, or its result), with its queue position; the 404 or
    410 of `own_job` otherwise."""
    row, failure = await own_job(request_id, key, request)
    if failure is not None:
        return failure
    assert row is not None  # own_job gives the row or the failure
    position = await run_in_threadpool(state.queue.position, request_id)
    return JSONResponse(await run_in_threadpool(body, row, position=position))


@router.post(
    "/v2/requests/{request_id}/cancel",
    response_model=CancelResponse,
    responses=JOB_ERRORS,
    summary="Cancel a job: a queued one is removed, a running one stops at its next step; credits released",
)
async def job_cancel(request_id: str, request: Request, key: Auth, state: State):
    row, failure = await own_job(request_id, key, request, allow_expired=True)
    if failure is not None:
        return failure
    assert row is not None  # own_job gives the row or the failure
    outcome = await run_in_threadpool(
        state.queue.cancel, request_id, "canceled by the client", state.config.cancel_wait_s
    )
    return JSONResponse(
        {
            "request_id": request_id,
            "action": outcome.action,
            "status": outcome.status,
            "credits_released": outcome.action in (CancelAction.REMOVED, CancelAction.STOPPED),
        }
    )


@router.get(
    "/v2/requests/{request_id}/webhooks",
    response_model=WebhookListResponse,
    responses=JOB_ERRORS,
    summary="The job's webhook deliveries: id (the webhook-id header), attempts, last answer or error",
)
async def job_webhooks(request_id: str, request: Request, key: Auth, state: State):
    row, failure = await own_job(request_id, key, request, allow_expired=True)
    if failure is not None:
        return failure
    assert row is not None  # own_job gives the row or the failure
    messages = await run_in_threadpool(state.outbox.for_job, request_id)
    return JSONResponse(
        {
            "request_id": request_id,
            "webhook_url": row["webhook_url"],
            "deliveries": [m.public() for m in messages],
        }
    )
