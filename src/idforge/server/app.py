"""The FastAPI app: the seed's /v1 endpoints, the /v2 job contract (SPEC.md section 6), health and readiness.

Conventions (seed 002): auth by `x-api-key`; `x-remaining-credits` on every authenticated response; errors are
JSON `{"status", "error", "field", "request_id"}` with 400 (invalid input, never a framework 422), 401, 404, 405,
406 (not enough credits), 410 (an expired job), 413 (body too large), 503 (queue full, with Retry-After) and 500
(no traceback leaks; it is logged with the request id). /v2 answers carry absolute URLs (urls.py) in the shapes of
contract.py; a job is visible only to the key that submitted it (any other key gets 404).

`create_app` only assembles: the app's parts in one `ServerState` (deps.py) on `app.state.server`, the routers
(routers/: one module per resource), the exception handlers (errors_http.py), the OpenAPI tweak.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from idforge import __version__
from idforge.server.config import ServerConfig
from idforge.server.db import Store
from idforge.server.deps import ServerState
from idforge.server.errors_http import install_handlers
from idforge.server.jobs import Generator
from idforge.server.metrics import metrics_registry
from idforge.server.middleware import RequestContext
from idforge.server.outbox import WebhookOutbox
from idforge.server.previews import PreviewService
from idforge.server.routers import account, health, methods, previews, requests, studio, workflow
from idforge.server.service import JobService
from idforge.server.store_factory import open_store, speaks_contract
from idforge.server.webhooks import WebhookDispatcher
from idforge.server.worker import Worker, WorkerConfig

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger("idforge.server")

DESCRIPTION = (
    "Identity-preserving image generation: Insta Depth (seed 002), InstantID, IP-Adapter FaceID. "
    "Authenticate with the `x-api-key` header; `x-remaining-credits` comes back on every authenticated "
    "response. Price: one credit per started ten steps, per delivered image. `/v1/{method}` answers with "
    "the image; `/v2/{method}` queues a job (Segmind's async contract: poll `status_url`, fetch "
    "`response_url`, cancel, or get a signed webhook)."
)


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
    state = build_state(config, generator, keys, embedded_worker=embedded_worker)
    app = FastAPI(title="idforge", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.server = state
    app.add_middleware(RequestContext, keys=state.store, max_body_bytes=config.max_body_bytes)
    install_handlers(app)
    app.include_router(methods.build_router())
    app.include_router(workflow.router)
    app.include_router(requests.router)
    app.include_router(account.router)
    app.include_router(health.router)
    app.include_router(previews.router)
    studio.install(app)
    _install_openapi(app)
    return app


def build_state(
    config: ServerConfig, generator: Generator | None, keys: Store | None, *, embedded_worker: bool
) -> ServerState:
    """The store (opened here unless given), the job service with its embedded worker (if any), the webhook
    outbox and dispatcher, the metrics registry, the previews' engine."""
    store = speaks_contract(keys) if keys is not None else open_store(config)
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
            warm_up=True if config.warm_up is None else config.warm_up,
        )
    policy = config.webhook_policy
    outbox = WebhookOutbox(store.outbox_repo)
    return ServerState(
        config=config,
        store=store,
        queue=JobService(store, capacity=config.queue_size, retry_after=config.retry_after, worker=worker),
        outbox=outbox,
        dispatcher=WebhookDispatcher(outbox, store.webhook_secret, policy),
        webhook_policy=policy,
        registry=metrics_registry(store),
        previews=PreviewService(list(config.models_dirs), config.face_models, config.images),
        owns_store=keys is None,
    )


async def _expire_results(state: ServerState) -> None:
    """Results older than result_ttl go (the row stays, so the id answers 410, not 404)."""
    ttl = state.config.result_ttl
    while True:
        with suppress(Exception):
            await run_in_threadpool(state.store.expire, time.time() - ttl)
        await asyncio.sleep(min(60.0, max(ttl / 4, 0.5)))


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServerState = app.state.server
    config = state.config
    state.queue.start()
    state.dispatcher.start()
    janitor = asyncio.create_task(_expire_results(state))
    log.info("server started", extra={"fields": {"db": str(config.db_path), "queue_size": config.queue_size}})
    yield
    janitor.cancel()
    await run_in_threadpool(state.queue.stop, config.shutdown_timeout)
    await run_in_threadpool(state.dispatcher.stop)
    if state.owns_store:
        state.store.close()
    log.info("server stopped")


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
