"""POST /v2/workflow: a ComfyUI workflow (UI or API format JSON) run as one job: priced as the sum of its
generations, cancelable, with webhooks, its images per output node in the result (`output.nodes`).
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from idforge.methods.fields import IMAGE_HELP
from idforge.server.contract import submit_body
from idforge.server.deps import Auth, base_url, server_state
from idforge.server.errors_http import ERROR_RESPONSES
from idforge.server.jobs import QueueFull, ServerStopping
from idforge.server.middleware import error_response
from idforge.server.schemas import AcceptedResponse
from idforge.server.store import NotEnoughCredits
from idforge.server.webhooks import check_webhook_url
from idforge.server.workflows import build_workflow_spec


class WorkflowBody(BaseModel):
    """A ComfyUI workflow to run, its images by LoadImage node id, and changes to its inputs."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(
        ...,
        description="the workflow JSON: UI format (nodes/links, 0.4 or 1.0) or API format ({id: {class_type, inputs}})",
    )
    images: dict[str, str] = Field(
        default_factory=dict, description=f"LoadImage node id -> its image: {IMAGE_HELP}"
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description='inputs to change first, "NODE.INPUT": value (e.g. {"9.ip_weight": 0.6})',
    )
    name: str = Field("workflow.json", max_length=200, description="the workflow's file name, for the recipe")
    webhook_url: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives the final status body (as /v2/<method>)"
    )


router = APIRouter()


@router.post(
    "/v2/workflow",
    summary="Run a ComfyUI workflow (InstantID, FaceID, Insta Depth nodes) as a job; results per output node",
    status_code=202,
    responses={202: {"model": AcceptedResponse}, **ERROR_RESPONSES},
    response_model=None,
    operation_id="v2_workflow",
)
async def v2_workflow(request: Request, body: WorkflowBody, key: Auth):
    state = server_state(request)
    webhook_url = body.webhook_url
    if webhook_url is not None:
        webhook_url = await run_in_threadpool(check_webhook_url, webhook_url, state.webhook_policy)
    spec, cost = await run_in_threadpool(build_workflow_spec, body, state.config)
    try:
        submitted = state.queue.submit(
            spec, key.id, cost, sync=False, webhook_url=webhook_url, base_url=base_url(request)
        )
    except NotEnoughCredits as exc:
        return error_response(406, f"not enough credits: this request costs {exc.needed}", request)
    except QueueFull as exc:
        return error_response(503, str(exc), request, headers={"Retry-After": str(exc.retry_after)})
    except ServerStopping:
        return error_response(503, "the server is shutting down", request, headers={"Retry-After": "10"})
    request.state.job_id = submitted.job_id
    return JSONResponse(
        submit_body(submitted.job_id, base_url(request), submitted.position, cost), status_code=202
    )
