"""The server's public base URL, for the absolute `status_url` / `response_url` the v2 contract needs.

Order: `--public-url` when set; else the request's own scheme and Host header; `X-Forwarded-Proto` and
`X-Forwarded-Host` are honoured only with `--trust-proxy` (anyone can send them, so by default they are ignored).
A Host value that is not a plain host[:port] falls back to the address the server listens on, so a hostile header
can never put arbitrary text into a URL.
"""

from __future__ import annotations

import re

from starlette.requests import Request

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


def public_base_url(request: Request, *, public_url: str | None = None, trust_proxy: bool = False) -> str:
    """scheme://host[:port], without a trailing slash."""
    if public_url:
        return public_url.rstrip("/")
    scheme = request.url.scheme if request.url.scheme in ("http", "https") else "http"
    host = request.headers.get("host", "")
    if trust_proxy:
        proto = _first(request.headers.get("x-forwarded-proto")).lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded = _first(request.headers.get("x-forwarded-host"))
        if forwarded and _HOST.match(forwarded):
            host = forwarded
    if not _HOST.match(host):
        server = request.scope.get("server") or ("127.0.0.1", 80)
        address = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
        host = address if server[1] in (None, 80, 443) else f"{address}:{server[1]}"
    return f"{scheme}://{host}"
