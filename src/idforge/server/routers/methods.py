"""The generation endpoints: `/v1/<method>` answers with the image (it waits for the job, watching the client),
`/v2/<method>` queues a job and answers 202 with its absolute URLs. Both submit the same way: Segmind's names onto
ours, the webhook URL checked, the body turned into a job spec, its price held, the job queued.

Every served method is registered by one loop over `served_methods()`.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import asyncio
import base64
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from idforge.methods.registry import get_method, methods
from idforge.server.contract import submit_body
from idforge.server.deps import Auth, base_url, server_state
from idforge.server.errors_http import ERROR_RESPONSES
from idforge.server.jobs import Delivery, JobCanceled, JobError, QueueFull, ServerStopping
from idforge.server.methods import billed_steps, build_spec, output_count
from idforge.server.middleware import error_response
from idforge.server.schemas import AcceptedResponse, ImageResponse, RequestFieldError
from idforge.server.segmind_names import resolve_names
from idforge.server.store import KeyRecord, NotEnoughCredits
from idforge.server.webhooks import check_webhook_url

log = logging.getLogger("idforge.server")

DISCONNECT_POLL_S = 0.25  # how often a waiting /v1 request checks that its client is still there


def _about(name: str) -> dict[str, Any]:
    """What the studio needs to offer a method (the x-idforge-method extension): its title, its previews, and the
    recipe `method` names it rebuilds (a dropped PNG's recipe opens that method's form)."""
    method = get_method(name)
    return {
        "title": method.title,
        "previews": list(method.previews),
        "recipe_methods": list(method.recipe_names),
    }


def served_methods() -> Sequence[tuple[str, str, type[BaseModel], str]]:
    """(url path, method name, body model, summary) of every method served at /v1/<path> and /v2/<path>: the
    method registry's (methods/registry.py), so a registered method is served and documented with nothing here."""
    return tuple((method.name, method.name, method.body, method.summary) for method in methods())


# -- submitting ---------------------------------------------------------------------------------------------------
async def submit(method: str, body: Any, key: KeyRecord, request: Request, *, sync: bool):
    """Queue the job: ((submitted, cost, body in our names), None), or (None, the error response)."""
    state = server_state(request)
    config = state.config
    body = resolve_names(method, body)
    webhook_url = body.webhook_url
    if webhook_url is not None:
        if sync:
            raise RequestFieldError("webhook_url", "only /v2 requests can have a webhook; drop it for /v1")
        webhook_url = await run_in_threadpool(check_webhook_url, webhook_url, state.webhook_policy)
    spec = await run_in_threadpool(build_spec, method, body, config.images)
    cost = config.pricing.price(method, billed_steps(body), output_count(method, body))
    try:
        submitted = state.queue.submit(
            spec, key.id, cost, sync=sync, webhook_url=webhook_url, base_url=base_url(request)
        )
    except NotEnoughCredits as exc:
        return None, error_response(406, f"not enough credits: this request costs {exc.needed}", request)
    except QueueFull as exc:
        return None, error_response(503, str(exc), request, headers={"Retry-After": str(exc.retry_after)})
    except ServerStopping:
        return None, error_response(
            503, "the server is shutting down", request, headers={"Retry-After": "10"}
        )
    request.state.job_id = submitted.job_id
    return (submitted, cost, body), None


async def wait_for_client(job_id: str, waiting: asyncio.Future, request: Request) -> bool:
    """Wait for the job while watching the connection (Starlette does not cancel a handler whose client
    left); False when the client went away, in which case the job is canceled and nothing is charged."""
    queue = server_state(request).queue
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if await request.is_disconnected():
            await run_in_threadpool(queue.undelivered, job_id)
            log.info("client left; job canceled", extra={"fields": {"job_id": job_id}})
            return False
        if done:
            return True


async def run_sync(method: str, body: Any, key: KeyRecord, request: Request):
    """/v1: submit, wait for the job, charge once the client is there to take the image, answer with it."""
    queue = server_state(request).queue
    outcome, failure = await submit(method, body, key, request, sync=True)
    if failure is not None:
        return failure
    submitted, cost, body = outcome  # the body in our names (segmind_names)
    waiting = asyncio.ensure_future(queue.outcome(submitted.job_id))
    waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved
    if not await wait_for_client(submitted.job_id, waiting, request):
        waiting.cancel()
        return error_response(499, "the client closed the connection; the job was canceled", request)
    try:
        delivery: Delivery = waiting.result()
    except JobError as exc:
        status = exc.status if exc.status in (400, 500, 503) else 500
        return error_response(status, exc.message, request, exc.field)
    except JobCanceled as exc:
        return error_response(499, str(exc), request)
    except ServerStopping:
        return error_response(503, "the server is shutting down", request, headers={"Retry-After": "10"})
    await run_in_threadpool(queue.delivered, submitted.job_id)  # the client is there: now it is charged
    headers = {
        "x-seed": str(delivery.seeds[0]),
        "x-credits-charged": str(cost),
        "x-queue-time": str(delivery.timings.get("queue_s", 0.0)),
        "x-inference-time": str(delivery.timings.get("inference_s", 0.0)),
        "x-job-id": submitted.job_id,
    }
    identity = delivery.recipe.get("identity")
    if identity:
        headers["x-identity-score"] = identity_header(identity)
    if not body.base64:
        return Response(delivery.images[0], media_type="image/jpeg", headers=headers)
    payload = image_payload(delivery) | {"credits_charged": cost, "request_id": request.state.request_id}
    return JSONResponse(payload, headers=headers)


async def run_async(method: str, body: Any, key: KeyRecord, request: Request):
    """/v2: submit, answer 202 with the job's position, reserved credits and absolute URLs."""
    outcome, failure = await submit(method, body, key, request, sync=False)
    if failure is not None:
        return failure
    submitted, cost, _ = outcome
    return JSONResponse(
        submit_body(submitted.job_id, base_url(request), submitted.position, cost), status_code=202
    )


def image_payload(delivery: Delivery) -> dict[str, Any]:
    """The /v1 JSON answer (base64 true): image(s), seed(s), warnings, timings, depth map, identity."""
    images = [base64.b64encode(b).decode("ascii") for b in delivery.images]
    payload: dict[str, Any] = {
        "image": images[0],
        "images": images,
        "seed": delivery.seeds[0],
        "seeds": delivery.seeds,
        "mime_type": "image/jpeg",
        "warnings": delivery.warnings,
        "timings": delivery.timings,
    }
    if "depth_map" in delivery.extras:
        payload["depth_map"] = base64.b64encode(delivery.extras["depth_map"]).decode("ascii")
    if delivery.recipe.get("identity"):
        payload["identity"] = delivery.recipe["identity"]
    return payload


def identity_header(identity: dict[str, Any]) -> str:
    """`x-identity-score`: one value per image, comma-separated; `none` where no face was scored."""
    return ",".join(
        "none" if item.get("score") is None else f"{item['score']:.4f}" for item in identity["images"]
    )


# -- registration -------------------------------------------------------------------------------------------------
IMAGE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ImageResponse,
        "description": "Image generated: JSON when base64 is true, image/jpeg bytes when false",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _endpoints(name: str, body_type: type[BaseModel]):
    """The /v1 and /v2 endpoint functions of one method; `body_type` annotates the body so OpenAPI documents it."""

    async def v1_endpoint(request: Request, body: body_type, key: Auth):  # type: ignore[valid-type]
        return await run_sync(name, body, key, request)

    async def v2_endpoint(request: Request, body: body_type, key: Auth):  # type: ignore[valid-type]
        return await run_async(name, body, key, request)

    return v1_endpoint, v2_endpoint


def build_router() -> APIRouter:
    """POST /v1/<path> and /v2/<path> for every served method (operation ids v1_<name>, v2_<name>)."""
    router = APIRouter()
    for path, name, body, summary in served_methods():
        v1_endpoint, v2_endpoint = _endpoints(name, body)
        operation = name.replace("-", "_")
        router.post(
            f"/v1/{path}",
            summary=f"{summary} (synchronous)",
            responses=IMAGE_DOC | ERROR_RESPONSES,
            response_model=None,
            operation_id=f"v1_{operation}",
        )(v1_endpoint)
        router.post(
            f"/v2/{path}",
            summary=f"{summary} (async: answers with the job's absolute status_url and response_url)",
            status_code=202,
            responses={202: {"model": AcceptedResponse}, **ERROR_RESPONSES},
            response_model=None,
            operation_id=f"v2_{operation}",
            openapi_extra={"x-idforge-method": _about(name)},
        )(v2_endpoint)
    return router
