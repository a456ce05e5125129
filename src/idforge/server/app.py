"""The FastAPI app: the seed's /v1 endpoints, /v2 async jobs, health, and the error conventions.

Conventions (seed 002): auth by `x-api-key`; `x-remaining-credits` on every authenticated response; errors are
JSON `{"status", "error", "field", "request_id"}` with 400 (invalid input, never a framework 422), 401, 404, 405,
406 (not enough credits), 413 (body too large), 503 (queue full, with Retry-After) and 500 (no traceback leaks;
it is logged with the request id).
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import asyncio
import base64
import logging
import re
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from idforge import __version__
from idforge.errors import IdforgeError
from idforge.server.images import ImagePolicy
from idforge.server.jobs import (
    Delivery,
    Generator,
    JobError,
    JobQueue,
    JobStore,
    QueueFull,
    ServerStopping,
)
from idforge.server.methods import build_spec, field_for, output_count
from idforge.server.pricing import Pricing
from idforge.server.schemas import (
    AcceptedResponse,
    ErrorResponse,
    FaceIDBody,
    ImageResponse,
    InstaDepthBody,
    InstantIDBody,
    JobStatusResponse,
)
from idforge.server.store import KeyRecord, KeyStore, NotEnoughCredits, SQLiteKeyStore

log = logging.getLogger("idforge.server")


@dataclass
class ServerConfig:
    db_path: Path
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


class BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, request: Request | None, field: str | None = None, headers=None):
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body = {"status": status, "error": message, "field": field, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    if not parts:
        return None
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


class RequestContext:
    """Pure ASGI middleware: request id, body size limit, x-remaining-credits, the access log, last-resort 500."""

    def __init__(self, app, *, keys: KeyStore, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if re.fullmatch(r"[\w.-]{1,64}", given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status_holder = {"status": 500, "started": False}

        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._send_json(
                send, 413, f"request body over {self.max_body_bytes} bytes", request_id, state
            )
            self._log(scope, 413, started, request_id, state)
            return

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"request body over {self.max_body_bytes} bytes")
            return message

        async def wrapped_send(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                extra = [(b"x-request-id", request_id.encode())]
                if state.get("key_id"):
                    balance = self.keys.balance(state["key_id"])
                    extra.append((b"x-remaining-credits", str(balance).encode()))
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, limited_receive, wrapped_send)
        except Exception:  # never leak a traceback; log it with the request id
            log.error(
                "unhandled error",
                extra={"fields": {"request_id": request_id, "trace": traceback.format_exc()}},
            )
            if not status_holder["started"]:
                await self._send_json(wrapped_send, 500, "internal server error", request_id, state)
        self._log(scope, status_holder["status"], started, request_id, state)

    async def _send_json(self, send, status: int, message: str, request_id: str, state) -> None:
        response = JSONResponse(
            {"status": status, "error": message, "field": None, "request_id": request_id}, status_code=status
        )
        await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    def _log(self, scope, status: int, started: float, request_id: str, state) -> None:
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "key_id": state.get("key_id"),
                    "job_id": state.get("job_id"),
                }
            },
        )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid input (the field is named)"},
    401: {"model": ErrorResponse, "description": "Unauthorized: user authentication failed"},
    406: {"model": ErrorResponse, "description": "Not Acceptable: not enough credits"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    500: {"model": ErrorResponse, "description": "Server had some issue with processing"},
    503: {"model": ErrorResponse, "description": "Queue full; retry after the Retry-After header's seconds"},
}


def create_app(
    config: ServerConfig, generator: Generator | None = None, keys: KeyStore | None = None
) -> FastAPI:
    """The app; `generator` defaults to the real engine (tests may inject another)."""
    keys = keys if keys is not None else SQLiteKeyStore(config.db_path)
    jobs = JobStore(config.db_path)
    if generator is None:
        from idforge.engine.session import ModelChoice
        from idforge.server.methods import EngineGenerator

        models = ModelChoice(base=config.base, face_models=config.face_models, models_dirs=config.models_dirs)
        generator = EngineGenerator(models, device=config.device, dtype=config.dtype, fast=config.fast)
    queue = JobQueue(jobs, keys, generator, capacity=config.queue_size, retry_after=config.retry_after)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        log.info(
            "server started", extra={"fields": {"db": str(config.db_path), "queue_size": config.queue_size}}
        )
        yield
        await run_in_threadpool(queue.stop, config.shutdown_timeout)
        log.info("server stopped")

    app = FastAPI(
        title="idforge",
        version=__version__,
        description="Identity-preserving image generation: Insta Depth (seed 002), InstantID, IP-Adapter FaceID. "
        "Authenticate with the `x-api-key` header; `x-remaining-credits` comes back on every authenticated "
        "response. Price: one credit per started ten steps, per delivered image.",
        lifespan=lifespan,
    )
    app.state.queue = queue
    app.state.keys = keys
    app.state.config = config
    app.add_middleware(RequestContext, keys=keys, max_body_bytes=config.max_body_bytes)

    # -- errors ---------------------------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        field_name = _location(first.get("loc", ()))
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
        return _error(400, message or "invalid input", request, field_name)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        messages = {404: "the requested URL does not exist", 405: "the requested HTTP method is not allowed"}
        message = exc.detail if isinstance(exc.detail, str) and exc.status_code not in messages else None
        return _error(
            exc.status_code, message or messages.get(exc.status_code, "error"), request, None, exc.headers
        )

    @app.exception_handler(IdforgeError)
    async def on_idforge(request: Request, exc: IdforgeError):
        return _error(400, str(exc), request, field_for(getattr(exc, "name", None)))

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

    # -- generation -----------------------------------------------------------------------------------------------
    async def submit(method: str, body: Any, key: KeyRecord, request: Request, *, sync: bool):
        spec = await run_in_threadpool(build_spec, method, body, config.images)
        cost = config.pricing.price(method, body.num_inference_steps, output_count(method, body))
        try:
            submitted = queue.submit(spec, key.id, cost, sync=sync)
        except NotEnoughCredits as exc:
            return None, _error(406, f"not enough credits: this request costs {exc.needed}", request)
        except QueueFull as exc:
            return None, _error(503, str(exc), request, headers={"Retry-After": str(exc.retry_after)})
        except ServerStopping:
            return None, _error(503, "the server is shutting down", request, headers={"Retry-After": "10"})
        request.state.job_id = submitted.job_id
        return (submitted, cost), None

    async def run_sync(method: str, body: Any, key: KeyRecord, request: Request):
        outcome, failure = await submit(method, body, key, request, sync=True)
        if failure is not None:
            return failure
        submitted, cost = outcome
        try:
            delivery: Delivery = await asyncio.wrap_future(submitted.future)
        except JobError as exc:
            status = exc.status if exc.status in (400, 500, 503) else 500
            return _error(status, exc.message, request, exc.field)
        except ServerStopping:
            return _error(503, "the server is shutting down", request, headers={"Retry-After": "10"})
        except asyncio.CancelledError:
            queue.cancel_waiter(submitted.job_id)  # the client left: refund if the job had not started
            raise
        headers = {
            "x-seed": str(delivery.seeds[0]),
            "x-credits-charged": str(cost),
            "x-queue-time": str(delivery.timings.get("queue_s", 0.0)),
            "x-inference-time": str(delivery.timings.get("inference_s", 0.0)),
            "x-job-id": submitted.job_id,
        }
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
        submitted, cost = outcome
        return JSONResponse(
            {
                "request_id": submitted.job_id,
                "status": "queued",
                "position": submitted.position,
                "status_url": f"/v2/requests/{submitted.job_id}",
                "credits_reserved": cost,
            },
            status_code=202,
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
            summary=f"{summary} (async: returns a request id to poll)",
            status_code=202,
            responses={202: {"model": AcceptedResponse}} | ERROR_RESPONSES,
            response_model=None,
            operation_id=f"v2_{method.replace('-', '_')}",
        )(v2_endpoint)

    register("insta-depth", "insta-depth", InstaDepthBody, "Insta Depth: InstantID + depth ControlNet")
    register("instantid", "instantid", InstantIDBody, "InstantID")
    register("faceid", "faceid", FaceIDBody, "IP-Adapter FaceID (batch included)")

    @app.get(
        "/v2/requests/{request_id}",
        response_model=JobStatusResponse,
        responses={404: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
        summary="Status of an async request: queued (position), running (step), succeeded (image), failed",
    )
    async def job_status(request_id: str, request: Request, key: Auth):
        row = await run_in_threadpool(queue.jobs.get, request_id)
        if row is None or row["key_id"] != key.id or row["sync"]:
            return _error(404, f"no request {request_id!r} for this key", request)
        payload: dict[str, Any] = {
            "request_id": request_id,
            "method": row["method"],
            "status": row["status"],
            "credits": row["cost"],
        }
        if row["status"] == "queued":
            payload["position"] = queue.position(request_id)
        elif row["status"] == "running":
            step = queue.progress(request_id) or (0, 0)
            payload["step"], payload["total_steps"] = step
        elif row["status"] == "succeeded" and row["result"]:
            payload |= _image_payload(Delivery.from_json(row["result"]))
        elif row["status"] == "failed":
            payload |= {
                "error": row["error"],
                "error_status": row["error_status"],
                "field": row["error_field"],
            }
            payload["credits"] = 0
        return JSONResponse(payload)

    @app.get("/v1/account", summary="The key's balance and spending")
    async def account(key: Auth):
        record = keys.get(key.id)
        return {"key_id": record.id, "name": record.name, "credits": record.balance, "spent": record.spent}

    @app.get("/health", summary="Liveness and queue state (no auth)")
    async def health():
        stats = queue.stats()
        status = "ok" if stats["worker_alive"] else "degraded"
        return JSONResponse(
            {"status": status, "version": __version__, "queue": stats},
            status_code=200 if status == "ok" else 503,
        )

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
    return payload


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
