"""Request plumbing shared by every endpoint: request ids, the body size limit, `x-remaining-credits`, the JSON
access log, the last-resort 500 (no traceback leaks), and the one error body shape
`{"status", "error", "field", "request_id"}`.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from collections.abc import Mapping

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from idforge.server.store import KeyStore

log = logging.getLogger("idforge.server")


def error_response(
    status: int,
    message: str,
    request: Request | None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The API's one error shape; `field` names the request field at fault."""
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body = {"status": status, "error": message, "field": field, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def error_location(loc: tuple | list) -> str | None:
    """A pydantic error location as a field path: ("body", "extra_face_images", 1) -> extra_face_images[1]."""
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
