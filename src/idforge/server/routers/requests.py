"""The /v2 job resources (SPEC.md section 6): status, result, cancel and webhook deliveries of a job, each
visible only to the key that submitted it (any other key gets 404); an expired result answers 410.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from idforge.server.contract import result_body, status_body
from idforge.server.deps import Auth, ServerState, State, own_job
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


def _job_route(
    method: str,
    path: str,
    name: str,
    response_model: type[BaseModel],
    summary: str,
    answer: Callable[[ServerState, dict[str, Any]], dict[str, Any]],
    *,
    allow_expired: bool = False,
) -> None:
    """`method path`: the calling key's job as `answer(state, row)` renders it (in the thread pool), or the 404
    (not this key's job) or 410 (expired, unless `allow_expired`) of `own_job`."""

    async def endpoint(request_id: str, request: Request, key: Auth, state: State) -> Response:
        row, failure = await own_job(request_id, key, request, allow_expired=allow_expired)
        if failure is not None:
            return failure
        assert row is not None  # own_job gives the row or the failure
        return JSONResponse(await run_in_threadpool(answer, state, row))

    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        name=name,
        response_model=response_model,
        responses=JOB_ERRORS,
        summary=summary,
    )


def _status(state: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    return status_body(row, position=state.queue.position(row["id"]))


def _result(state: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    return result_body(row, position=state.queue.position(row["id"]))


def _cancel(state: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    """Cancel, waiting up to `cancel_wait_s` for a running job to stop so the answer can say it has."""
    outcome = state.queue.cancel(row["id"], "canceled by the client", state.config.cancel_wait_s)
    return {
        "request_id": row["id"],
        "action": outcome.action,
        "status": outcome.status,
        "credits_released": outcome.action in (CancelAction.REMOVED, CancelAction.STOPPED),
    }


def _webhooks(state: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    messages = state.outbox.for_job(row["id"])
    return {
        "request_id": row["id"],
        "webhook_url": row["webhook_url"],
        "deliveries": [m.public() for m in messages],
    }


_job_route(
    "GET",
    "/v2/requests/{request_id}/status",
    "job_status",
    JobStatusResponse,
    "Status of a job: QUEUED (position), PROCESSING (step), COMPLETED, FAILED (error), CANCELED",
    _status,
)
_job_route(
    "GET",
    "/v2/requests/{request_id}",
    "job_result",
    JobResultResponse,
    "Result of a job: the status, and once COMPLETED the output image(s), metrics, seed, recipe",
    _result,
)
_job_route(
    "POST",
    "/v2/requests/{request_id}/cancel",
    "job_cancel",
    CancelResponse,
    "Cancel a job: a queued one is removed, a running one stops at its next step; credits released",
    _cancel,
    allow_expired=True,
)
_job_route(
    "GET",
    "/v2/requests/{request_id}/webhooks",
    "job_webhooks",
    WebhookListResponse,
    "The job's webhook deliveries: id (the webhook-id header), attempts, last answer or error",
    _webhooks,
    allow_expired=True,
)
