"""POST /v2/workflow: a ComfyUI workflow (UI or API format JSON) run as one job: priced as the sum of its
generations, cancelable, with webhooks, its images per output node in the result (`output.nodes`).
POST /v1/workflow/plan: the same workflow explained for free (what the studio shows before Run).
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
from idforge.server.workflows import build_workflow_spec, plan_workflow_body


class WorkflowPlanBody(BaseModel):
    """A ComfyUI workflow and changes to its inputs: what POST /v1/workflow/plan explains for free."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(
        ...,
        description="the workflow JSON: UI format (nodes/links, 0.4 or 1.0) or API format ({id: {class_type, inputs}})",
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description='inputs to change first, "NODE.INPUT": value (e.g. {"9.ip_weight": 0.6})',
    )
    name: str = Field("workflow.json", max_length=200, description="the workflow's file name, for the recipe")


class WorkflowBody(WorkflowPlanBody):
    """A ComfyUI workflow to run, its images by LoadImage node id, and changes to its inputs."""

    images: dict[str, str] = Field(
        default_factory=dict, description=f"LoadImage node id -> its image: {IMAGE_HELP}"
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives the final status body (as /v2/<method>)"
    )


class PlannedImage(BaseModel):
    node: str = Field(..., description="the LoadImage node id: the key of its image in /v2/workflow `images`")
    title: str = Field(..., description="the node's title in the workflow (its class when it has none)")
    filename: str = Field(..., description="the file the node names in the workflow")
    feeds: list[str] = Field(..., description='the method body fields it fills, e.g. "instantid.face_image"')


class PlannedOutput(BaseModel):
    node: str = Field(
        ..., description="a SaveImage / PreviewImage node id: a key of the result's `output.nodes`"
    )
    title: str


class PlannedRun(BaseModel):
    sampler: str = Field(..., description="the KSampler node id")
    method: str = Field(..., description="the idforge method it runs as")
    params: dict[str, Any] = Field(..., description="the method's body parameters as the planner mapped them")
    sources: dict[str, str] = Field(..., description='parameter -> the "NODE.INPUT" it came from (for `set`)')
    outputs: list[str]
    price: int = Field(..., description="credits this generation costs")


class WorkflowPlanResponse(BaseModel):
    name: str
    format: str = Field(..., description='the format read, e.g. "ui-0.4", "api", "png:api"')
    generations: list[PlannedRun]
    images: list[PlannedImage] = Field(..., description="the LoadImage nodes that need an image")
    outputs: list[PlannedOutput]
    price: int = Field(..., description="credits POST /v2/workflow reserves for this workflow")
    explain: str = Field(..., description="the text of `idforge workflow run FILE --explain`")


router = APIRouter(tags=["workflow"])


@router.post(
    "/v1/workflow/plan",
    summary="Free: what a ComfyUI workflow will run (methods, parameters, images to give, outputs) and its price",
    responses={400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401]},
    response_model=WorkflowPlanResponse,
    operation_id="v1_workflow_plan",
)
async def v1_workflow_plan(request: Request, body: WorkflowPlanBody, key: Auth):
    """No model is loaded and nothing is charged; a bad workflow is the 400 /v2/workflow would give."""
    return await run_in_threadpool(plan_workflow_body, body, server_state(request).config)


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
