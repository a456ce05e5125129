"""The exception handlers that turn every failure into the API's one error body (middleware.error_response):
invalid input is a 400 naming the field (never a framework 422), FastAPI's 404/405 get our wording, a database
that went away is an honest 503; and `ERROR_RESPONSES`, how the OpenAPI schema documents those errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from idforge.errors import IdforgeError
from idforge.server.methods import error_field
from idforge.server.middleware import error_location, error_response
from idforge.server.schemas import ErrorResponse

log = logging.getLogger("idforge.server")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid input (the field is named)"},
    401: {"model": ErrorResponse, "description": "Unauthorized: user authentication failed"},
    406: {"model": ErrorResponse, "description": "Not Acceptable: not enough credits"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    500: {"model": ErrorResponse, "description": "Server had some issue with processing"},
    503: {"model": ErrorResponse, "description": "Queue full; retry after the Retry-After header's seconds"},
}


async def on_validation(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {}
    field_name = error_location(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        field_name = None
    if kind == "json_invalid" or (kind == "missing" and field_name is None):
        message = "request body is not valid JSON" if kind == "json_invalid" else "request body is missing"
    elif kind == "model_attributes_type" or (field_name is None and kind.endswith("_type")):
        message = "request body must be a JSON object (content-type: application/json)"
    elif kind == "extra_forbidden":
        message = f"{field_name}: unknown field"
    else:
        message = f"{field_name}: {first.get('msg', 'invalid value')}" if field_name else first.get("msg", "")
    return error_response(400, message or "invalid input", request, field_name)


async def on_http(request: Request, exc: StarletteHTTPException):
    messages = {404: "the requested URL does not exist", 405: "the requested HTTP method is not allowed"}
    message = exc.detail if isinstance(exc.detail, str) and exc.status_code not in messages else None
    return error_response(
        exc.status_code, message or messages.get(exc.status_code, "error"), request, None, exc.headers
    )


async def on_database(request: Request, exc: sa_exc.DBAPIError):
    """The database went away: an honest 503 (nothing was kept or charged; the transaction rolled back)."""
    log.warning("database unavailable", extra={"fields": {"error": str(exc.orig)[:200]}})
    return error_response(
        503, "the database is unavailable; retry shortly", request, headers={"Retry-After": "5"}
    )


async def on_idforge(request: Request, exc: IdforgeError):
    return error_response(400, str(exc), request, error_field(exc))


HANDLERS: dict[type[Exception], Callable[[Request, Any], Any]] = {
    RequestValidationError: on_validation,
    StarletteHTTPException: on_http,
    sa_exc.DBAPIError: on_database,
    IdforgeError: on_idforge,
}


def install_handlers(app: FastAPI) -> None:
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
