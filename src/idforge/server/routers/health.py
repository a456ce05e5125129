"""Liveness (`/health`), readiness (`/health/ready`) and Prometheus `/metrics`, all without auth: the state of
the models (loading, ready, degraded), the queue, the webhook dispatcher, the store and every replica.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from idforge import __version__
from idforge.server.deps import ServerState, State
from idforge.server.metrics import CONTENT_TYPE, render
from idforge.server.schemas import HealthResponse

router = APIRouter()


def health_body(state: ServerState) -> dict[str, Any]:
    queue = state.queue
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
        "webhooks": {"dispatcher_alive": state.dispatcher.alive},
        "store": state.store.backend,
        "replicas": replicas,
    }


def _probe(
    name: str, path: str, summary: str, failing_means: str, failing: Callable[[dict[str, Any]], bool]
) -> None:
    """GET `path`: the health body, answered 503 when `failing(body)` (a prober reads only the status code)."""

    async def endpoint(state: State):
        body = await run_in_threadpool(health_body, state)
        return JSONResponse(body, status_code=503 if failing(body) else 200)

    router.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        name=name,
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": failing_means}},
        summary=summary,
    )


_probe(
    "health",
    "/health",
    "Liveness: loading (with what is loading) or ready, and queue state (no auth)",
    "the worker thread is dead",
    lambda body: body["status"] == "degraded",
)
_probe(
    "health_ready",
    "/health/ready",
    "Readiness probe: 200 once the models are loaded, 503 until then (no auth)",
    "still loading models, or degraded",
    lambda body: not body["ready"],
)


@router.get(
    "/metrics",
    summary="Prometheus metrics of the whole service (queue depth, jobs by state, latencies, credits)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(state: State):
    return Response(await run_in_threadpool(render, state.registry), media_type=CONTENT_TYPE)
