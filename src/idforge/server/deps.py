"""What the routers share, read from `request.app.state.server` (one `ServerState` per app, built by
`create_app`), never from closures: the state object, the `x-api-key` check (`api_key`, and `Auth` for endpoint
signatures), the public base URL of absolute links, and the lookup of a /v2 job owned by the calling key.
No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from idforge.server.config import ServerConfig
from idforge.server.db import Store
from idforge.server.middleware import error_response
from idforge.server.outbox import WebhookOutbox
from idforge.server.previews import PreviewService
from idforge.server.service import JobService
from idforge.server.states import TERMINAL
from idforge.server.store import KeyRecord
from idforge.server.urls import public_base_url
from idforge.server.webhooks import WebhookDispatcher, WebhookPolicy


@dataclass
class ServerState:
    """One app's parts: its config, the store, the job service (with the embedded worker, if any), the webhook
    outbox and dispatcher, the metrics registry and the previews' CPU engine."""

    config: ServerConfig
    store: Store
    queue: JobService
    outbox: WebhookOutbox
    dispatcher: WebhookDispatcher
    webhook_policy: WebhookPolicy
    registry: CollectorRegistry
    previews: PreviewService
    owns_store: bool = True  # create_app opened the store (so the app's shutdown closes it)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


async def api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="Your API key")] = None,
) -> KeyRecord:
    """The key of the request (401 for a missing, unknown or revoked one); remembered so that the response
    carries `x-remaining-credits`."""
    record = server_state(request).store.authenticate(x_api_key or "")
    if record is None:
        raise HTTPException(401, "user authentication failed: missing, unknown or revoked x-api-key")
    request.state.key_id = record.id
    return record


Auth = Annotated[KeyRecord, Depends(api_key)]


def base_url(request: Request) -> str:
    """scheme://host[:port][/prefix] of the absolute URLs in /v2 answers (urls.py)."""
    config = server_state(request).config
    return public_base_url(request, public_url=config.public_url, trust_proxy=config.trust_proxy)


async def own_job(
    request_id: str, key: KeyRecord, request: Request, *, allow_expired: bool = False
) -> tuple[dict[str, Any] | None, JSONResponse | None]:
    """The job row if this key submitted it (else a 404 that says nothing about other keys' jobs), or a 410 for
    an expired result unless `allow_expired`: (row, None) or (None, the error response)."""
    state = server_state(request)
    ttl = state.config.result_ttl
    row = await run_in_threadpool(state.store.job, request_id)
    if row is None or row["key_id"] != key.id or row["sync"]:
        return None, error_response(404, f"no request {request_id!r} for this key", request)
    request.state.job_id = request_id
    expired = row["expired"] or (
        row["status"] in TERMINAL and row["finished"] is not None and row["finished"] < time.time() - ttl
    )
    if expired and not allow_expired:
        ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["finished"]))
        message = (
            f"request {request_id!r} has expired: results are kept for {ttl:g} s after a "
            f"job ends, and this one ended at {ended}"
        )
        return None, error_response(410, message, request)
    return row, None
