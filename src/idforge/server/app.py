"""The FastAPI app: the seed's /v1 endpoints, the /v2 job contract (SPEC.md section 6), health and readiness.

Conventions (seed 002): auth by `x-api-key`; `x-remaining-credits` on every authenticated response; errors are
JSON `{"status", "error", "field", "request_id"}` with 400 (invalid input, never a framework 422), 401, 404, 405,
406 (not enough credits), 410 (an expired job), 413 (body too large), 503 (queue full, with Retry-After) and 500
(no traceback leaks; it is logged with the request id). /v2 answers carry absolute URLs (urls.py) in the shapes of
contract.py; a job is visible only to the key that submitted it (any other key gets 404).
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import asyncio
import base64
import logging
import time
import uuid
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from idforge import __version__
from idforge.errors import IdforgeError
from idforge.server import previews, studio
from idforge.server.contract import result_body, status_body, submit_body
from idforge.server.db import Store
from idforge.server.images import ImagePolicy
from idforge.server.jobs import (
    Delivery,
    Generator,
    JobCanceled,
    JobError,
    QueueFull,
    ServerStopping,
)
from idforge.server.methods import billed_steps, build_spec, field_for, output_count
from idforge.server.metrics import CONTENT_TYPE, metrics_registry, render
from idforge.server.middleware import RequestContext, error_location, error_response
from idforge.server.outbox import WebhookOutbox
from idforge.server.pricing import Pricing
from idforge.server.schemas import (
    AcceptedResponse,
    CancelResponse,
    ErrorResponse,
    FaceIDBody,
    HealthResponse,
    ImageResponse,
    InstaDepthBody,
    InstantIDBody,
    JobResultResponse,
    JobStatusResponse,
    RequestFieldError,
    StyleInfo,
    WebhookListResponse,
)
from idforge.server.segmind_names import resolve_names
from idforge.server.service import JobService
from idforge.server.states import TERMINAL, CancelAction
from idforge.server.store import KeyRecord, NotEnoughCredits
from idforge.server.urls import public_base_url
from idforge.server.webhooks import WebhookDispatcher, WebhookPolicy, check_webhook_url
from idforge.server.worker import Worker, WorkerConfig

log = logging.getLogger("idforge.server")

DISCONNECT_POLL_S = 0.25  # how often a waiting /v1 request checks that its client is still there


@dataclass
class ServerConfig:
    db_path: (
        Path | str
    )  # a SQLite file, or a postgresql://user@host:port/db URL (the store of keys, credits, jobs)
    models_dirs: list[str] = field(default_factory=list)
    base: str | None = None
    face_models: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    fast: Any = None  # engine/fastpath.py FastPath (None: the engine's exact defaults)
    queue_size: int = 32
    retry_after: int = 5
    max_body_bytes: int = 32 * 1024 * 1024
    images: ImagePolicy = field(default_factory=ImagePolicy)
    pricing: Pricing = field(default_factory=Pricing)
    shutdown_timeout: float = 10.0
    public_url: str | None = None  # e.g. https://api.example.com: the base of every absolute URL
    trust_proxy: bool = False  # honour X-Forwarded-Proto / X-Forwarded-Host
    result_ttl: float = 3600.0  # seconds a finished /v2 job's result is kept
    webhooks: WebhookPolicy | None = None  # None: the image URL allow-list, default timings
    warm_up: tuple[str, ...] = (
        "insta-depth",
        "instantid",
        "faceid",
    )  # methods whose models load before ready
    lease_s: float = 30.0  # a worker that stops renewing for this long loses its job to another worker
    max_attempts: int = 3  # runs of one job (its workers died) before it is failed and refunded
    max_batch: int = 1  # queued jobs a worker may run in one denoising pass (server/batching.py)
    log_level: str = "info"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid input (the field is named)"},
    401: {"model": ErrorResponse, "description": "Unauthorized: user authentication failed"},
    406: {"model": ErrorResponse, "description": "Not Acceptable: not enough credits"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    500: {"model": ErrorResponse, "description": "Server had some issue with processing"},
    503: {"model": ErrorResponse, "description": "Queue full; retry after the Retry-After header's seconds"},
}
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    404: {"model": ErrorResponse, "description": "No such request for this key"},
    410: {
        "model": ErrorResponse,
        "description": "The request's result has expired (kept for a limited time)",
    },
}


def create_app(
    config: ServerConfig,
    generator: Generator | None = None,
    keys: Store | None = None,
    *,
    embedded_worker: bool = True,
) -> FastAPI:
    """The app; `generator` defaults to the real engine (tests may inject another). With `embedded_worker`
    (the single-process server) the app runs the one worker itself; without (behind Ray Serve) model replicas
    elsewhere take the jobs from the same database."""
    owns_store = keys is None
    store = keys if keys is not None else Store.open(config.db_path)
    store.webhook_body = status_body  # a webhook carries exactly what a poller of the status would see
    keys = jobs = store
    worker = None
    if embedded_worker:
        if generator is None:
            from idforge.server.methods import make_generator

            generator = make_generator(config)
        worker = Worker(
            store,
            generator,
            WorkerConfig(
                replica=f"embedded-{uuid.uuid4().hex[:8]}",
                device=str(config.device),
                lease_s=config.lease_s,
                keep_result_s=config.result_ttl,
                max_attempts=config.max_attempts,
                max_batch=config.max_batch,
            ),
            warm_up=config.warm_up,
        )
    queue = JobService(store, capacity=config.queue_size, retry_after=config.retry_after, worker=worker)
    webhook_policy = config.webhooks or WebhookPolicy(allow_hosts=tuple(config.images.allow_hosts))
    outbox = WebhookOutbox(store)
    dispatcher = WebhookDispatcher(outbox, store.webhook_secret, webhook_policy)
    registry = metrics_registry(store)

    async def expire_results() -> None:
        """Results older than result_ttl go (the row stays, so the id answers 410, not 404)."""
        while True:
            with suppress(Exception):
                await run_in_threadpool(jobs.expire, time.time() - config.result_ttl)
            await asyncio.sleep(min(60.0, max(config.result_ttl / 4, 0.5)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        dispatcher.start()
        janitor = asyncio.create_task(expire_results())
        log.info(
            "server started", extra={"fields": {"db": str(config.db_path), "queue_size": config.queue_size}}
        )
        yield
        janitor.cancel()
        await run_in_threadpool(queue.stop, config.shutdown_timeout)
        await run_in_threadpool(dispatcher.stop)
        if owns_store:
            store.close()
        log.info("server stopped")

    app = FastAPI(
        title="idforge",
        version=__version__,
        description="Identity-preserving image generation: Insta Depth (seed 002), InstantID, IP-Adapter FaceID. "
        "Authenticate with the `x-api-key` header; `x-remaining-credits` comes back on every authenticated "
        "response. Price: one credit per started ten steps, per delivered image. `/v1/{method}` answers with "
        "the image; `/v2/{method}` queues a job (Segmind's async contract: poll `status_url`, fetch "
        "`response_url`, cancel, or get a signed webhook).",
        lifespan=lifespan,
    )
    app.state.queue = queue
    app.state.keys = keys
    app.state.store = store
    app.state.config = config
    app.state.dispatcher = dispatcher
    app.add_middleware(RequestContext, keys=keys, max_body_bytes=config.max_body_bytes)

    # -- errors ---------------------------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        field_name = error_location(first.get("loc", ()))
        kind = first.get("type", "")
        if kind == "json_invalid":
            field_name = None
        if kind == "json_invalid" or (kind == "missing" and field_name is None):
            message = (
                "request body is not valid JSON" if kind == "json_invalid" else "request body is missing"
            )
        elif kind == "model_attributes_type" or (field_name is None and kind.endswith("_type")):
            message = "request body must be a JSON object (content-type: application/json)"
        elif kind == "extra_forbidden":
            message = f"{field_name}: unknown field"
        else:
            message = (
                f"{field_name}: {first.get('msg', 'invalid value')}" if field_name else first.get("msg", "")
            )
        return error_response(400, message or "invalid input", request, field_name)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        messages = {404: "the requested URL does not exist", 405: "the requested HTTP method is not allowed"}
        message = exc.detail if isinstance(exc.detail, str) and exc.status_code not in messages else None
        return error_response(
            exc.status_code, message or messages.get(exc.status_code, "error"), request, None, exc.headers
        )

    @app.exception_handler(sa_exc.DBAPIError)
    async def on_database(request: Request, exc: sa_exc.DBAPIError):
        """The database went away: an honest 503 (nothing was kept or charged; the transaction rolled back)."""
        log.warning("database unavailable", extra={"fields": {"error": str(exc.orig)[:200]}})
        return error_response(
            503, "the database is unavailable; retry shortly", request, headers={"Retry-After": "5"}
        )

    @app.exception_handler(IdforgeError)
    async def on_idforge(request: Request, exc: IdforgeError):
        name = getattr(exc, "name", None)
        return error_response(
            400, str(exc), request, name if isinstance(exc, RequestFieldError) else field_for(name)
        )

    # -- auth -----------------------------------------------------------------------------------------------------
    async def api_key(
        request: Request,
        x_api_key: Annotated[str | None, Header(description="Your API key")] = None,
    ) -> KeyRecord:
        record = keys.authenticate(x_api_key or "")
        if record is None:
            raise HTTPException(401, "user authentication failed: missing, unknown or revoked x-api-key")
        request.state.key_id = record.id
        return record

    Auth = Annotated[KeyRecord, Depends(api_key)]

    def base_url(request: Request) -> str:
        return public_base_url(request, public_url=config.public_url, trust_proxy=config.trust_proxy)

    # -- generation -----------------------------------------------------------------------------------------------
    async def submit(method: str, body: Any, key: KeyRecord, request: Request, *, sync: bool):
        body = resolve_names(method, body)
        webhook_url = body.webhook_url
        if webhook_url is not None:
            if sync:
                raise RequestFieldError(
                    "webhook_url", "only /v2 requests can have a webhook; drop it for /v1"
                )
            webhook_url = await run_in_threadpool(check_webhook_url, webhook_url, webhook_policy)
        spec = await run_in_threadpool(build_spec, method, body, config.images)
        cost = config.pricing.price(method, billed_steps(body), output_count(method, body))
        try:
            submitted = queue.submit(
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
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if await request.is_disconnected():
                await run_in_threadpool(queue.undelivered, job_id)
                log.info("client left; job canceled", extra={"fields": {"job_id": job_id}})
                return False
            if done:
                return True

    async def run_sync(method: str, body: Any, key: KeyRecord, request: Request):
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
        payload = _image_payload(delivery) | {
            "credits_charged": cost,
            "request_id": request.state.request_id,
        }
        return JSONResponse(payload, headers=headers)

    async def run_async(method: str, body: Any, key: KeyRecord, request: Request):
        outcome, failure = await submit(method, body, key, request, sync=False)
        if failure is not None:
            return failure
        submitted, cost, _ = outcome
        return JSONResponse(
            submit_body(submitted.job_id, base_url(request), submitted.position, cost), status_code=202
        )

    def register(path: str, method: str, body_type: type, summary: str) -> None:
        async def v1_endpoint(request: Request, body: body_type, key: Auth):  # type: ignore[valid-type]
            return await run_sync(method, body, key, request)

        async def v2_endpoint(request: Request, body: body_type, key: Auth):  # type: ignore[valid-type]
            return await run_async(method, body, key, request)

        image_doc = {
            200: {
                "model": ImageResponse,
                "description": "Image generated: JSON when base64 is true, image/jpeg bytes when false",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
        app.post(
            f"/v1/{path}",
            summary=f"{summary} (synchronous)",
            responses=image_doc | ERROR_RESPONSES,
            response_model=None,
            operation_id=f"v1_{method.replace('-', '_')}",
        )(v1_endpoint)
        app.post(
            f"/v2/{path}",
            summary=f"{summary} (async: answers with the job's absolute status_url and response_url)",
            status_code=202,
            responses={202: {"model": AcceptedResponse}} | ERROR_RESPONSES,
            response_model=None,
            operation_id=f"v2_{method.replace('-', '_')}",
        )(v2_endpoint)

    register("insta-depth", "insta-depth", InstaDepthBody, "Insta Depth: InstantID + depth ControlNet")
    register("instantid", "instantid", InstantIDBody, "InstantID")
    register("faceid", "faceid", FaceIDBody, "IP-Adapter FaceID (batch included)")

    # -- the v2 job resources ---------------------------------------------------------------------------------
    async def own_job(request_id: str, key: KeyRecord, request: Request, *, allow_expired: bool = False):
        """The job row if this key submitted it (else a 404 that says nothing about other keys' jobs)."""
        row = await run_in_threadpool(jobs.job, request_id)
        if row is None or row["key_id"] != key.id or row["sync"]:
            return None, error_response(404, f"no request {request_id!r} for this key", request)
        request.state.job_id = request_id
        expired = row["expired"] or (
            row["status"] in TERMINAL
            and row["finished"] is not None
            and row["finished"] < time.time() - config.result_ttl
        )
        if expired and not allow_expired:
            ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["finished"]))
            message = (
                f"request {request_id!r} has expired: results are kept for {config.result_ttl:g} s after a "
                f"job ends, and this one ended at {ended}"
            )
            return None, error_response(410, message, request)
        return row, None

    @app.get(
        "/v2/requests/{request_id}/status",
        response_model=JobStatusResponse,
        responses=JOB_ERRORS,
        summary="Status of a job: QUEUED (position), PROCESSING (step), COMPLETED, FAILED (error), CANCELED",
    )
    async def job_status(request_id: str, request: Request, key: Auth):
        row, failure = await own_job(request_id, key, request)
        if failure is not None:
            return failure
        position = await run_in_threadpool(queue.position, request_id)
        return JSONResponse(status_body(row, position=position))

    @app.get(
        "/v2/requests/{request_id}",
        response_model=JobResultResponse,
        responses=JOB_ERRORS,
        summary="Result of a job: the status, and once COMPLETED the output image(s), metrics, seed, recipe",
    )
    async def job_result(request_id: str, request: Request, key: Auth):
        row, failure = await own_job(request_id, key, request)
        if failure is not None:
            return failure
        position = await run_in_threadpool(queue.position, request_id)
        return JSONResponse(await run_in_threadpool(result_body, row, position=position))

    @app.post(
        "/v2/requests/{request_id}/cancel",
        response_model=CancelResponse,
        responses=JOB_ERRORS,
        summary="Cancel a job: a queued one is removed, a running one stops at its next step; credits released",
    )
    async def job_cancel(request_id: str, request: Request, key: Auth):
        row, failure = await own_job(request_id, key, request, allow_expired=True)
        if failure is not None:
            return failure
        outcome = await run_in_threadpool(queue.cancel, request_id, "canceled by the client", 2.0)
        return JSONResponse(
            {
                "request_id": request_id,
                "action": outcome.action,
                "status": outcome.status,
                "credits_released": outcome.action in (CancelAction.REMOVED, CancelAction.STOPPED),
            }
        )

    @app.get(
        "/v2/requests/{request_id}/webhooks",
        response_model=WebhookListResponse,
        responses=JOB_ERRORS,
        summary="The job's webhook deliveries: id (the webhook-id header), attempts, last answer or error",
    )
    async def job_webhooks(request_id: str, request: Request, key: Auth):
        row, failure = await own_job(request_id, key, request, allow_expired=True)
        if failure is not None:
            return failure
        messages = await run_in_threadpool(outbox.for_job, request_id)
        return JSONResponse(
            {
                "request_id": request_id,
                "webhook_url": row["webhook_url"],
                "deliveries": [m.public() for m in messages],
            }
        )

    # -- account, styles, health ------------------------------------------------------------------------------
    @app.get("/v1/account", summary="The key's balance and spending")
    async def account(key: Auth):
        record = keys.get(key.id)
        return {"key_id": record.id, "name": record.name, "credits": record.balance, "spent": record.spent}

    @app.get(
        "/v1/styles", response_model=list[StyleInfo], summary="The style templates for the `style` field"
    )
    async def styles():
        from idforge.styles import STYLES

        return [
            {"name": s.name, "description": s.description, "prompt": s.prompt, "negative": s.negative}
            for s in STYLES.values()
        ]

    def health_body() -> dict[str, Any]:
        stats = queue.stats()
        readiness = dict(queue.readiness)
        replicas = queue.replicas()
        if not stats["worker_alive"] and readiness["state"] == "ready":
            status = "degraded"
        else:
            status = readiness["state"]
        return {
            "status": status,
            "ready": status == "ready",
            "version": __version__,
            "loading": readiness.get("loading"),
            "unavailable": readiness.get("unavailable", {}),
            "warm_up_s": readiness.get("warm_up_s"),
            "queue": stats,
            "webhooks": {"dispatcher_alive": dispatcher.alive},
            "store": store.backend,
            "replicas": replicas,
        }

    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "the worker thread is dead"}},
        summary="Liveness: loading (with what is loading) or ready, and queue state (no auth)",
    )
    async def health():
        body = await run_in_threadpool(health_body)
        return JSONResponse(body, status_code=503 if body["status"] == "degraded" else 200)

    @app.get(
        "/health/ready",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "still loading models, or degraded"}},
        summary="Readiness probe: 200 once the models are loaded, 503 until then (no auth)",
    )
    async def health_ready():
        body = await run_in_threadpool(health_body)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics of the whole service (queue depth, jobs by state, latencies, credits)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def metrics():
        return Response(await run_in_threadpool(render, registry), media_type=CONTENT_TYPE)

    previews.install(app)
    studio.install(app)
    _install_openapi(app)
    return app


def _image_payload(delivery: Delivery) -> dict[str, Any]:
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


def _install_openapi(app: FastAPI) -> None:
    """The schema without FastAPI's automatic 422 (this API answers 400 for invalid input)."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
