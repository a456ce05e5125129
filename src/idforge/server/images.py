"""Image fields of a request: base64, data URLs or http(s) URLs, turned into checked image bytes.

Every limit is enforced before the expensive step: the encoded length before decoding base64, the declared and
streamed length while fetching a URL, the header's pixel count before decoding pixels (`load_image`). URLs are a
server-side request forgery risk, so the host is resolved once, every address must be public (not private,
loopback, link-local, multicast, reserved) unless an allow-list names the host or its network, and the connection
goes to the checked address (with the original Host header and TLS server name), so a second DNS answer cannot
redirect it. Redirects are followed by hand, each hop checked the same way.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

from idforge.errors import InputImageError
from idforge.imageio import load_image

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024  # one image, after base64 decoding or as fetched
    max_pixels: int = 16_000_000
    allow_urls: bool = True
    fetch_timeout: float = 10.0  # whole fetch, connect to last byte
    max_redirects: int = 3
    allow_hosts: Sequence[str] = field(default_factory=tuple)  # host names, addresses or CIDR networks


def _allowed_by_list(host: str, address: IPAddress, allow: Sequence[str]) -> bool:
    for entry in allow:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name entry that did not match
    return False


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged by its IPv4 part)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_multicast or address.is_private or address.is_loopback or address.is_link_local
    )


def resolve_checked(host: str, port: int, field_name: str, policy: ImagePolicy) -> IPAddress:
    """Resolve `host` and return an address that may be contacted, or raise InputImageError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise InputImageError(field_name, f"cannot resolve URL host {host!r} ({exc})") from None
    addresses = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        addresses.append(ipaddress.ip_address(text))
    if not addresses:
        raise InputImageError(field_name, f"URL host {host!r} has no address")
    for address in addresses:  # every answer must pass: a mixed answer is a rebinding trick
        if not is_public_address(address) and not _allowed_by_list(host, address, policy.allow_hosts):
            raise InputImageError(
                field_name,
                f"URL host {host!r} resolves to a non-public address ({address}); refused "
                "(the server's URL allow-list can permit it)",
            )
    return addresses[0]


@dataclass(frozen=True)
class PinnedURL:
    """A URL whose host passed the SSRF check, rewritten to connect to the checked address (no second lookup)."""

    target: str
    host_header: str
    extensions: dict


def pin_url(url: str, field_name: str, policy: ImagePolicy) -> PinnedURL:
    """Check an http(s) URL (scheme, host, port, no credentials, public address) and pin its address; raises
    InputImageError naming `field_name`. Image URLs and webhook URLs both go through here."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InputImageError(field_name, "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputImageError(field_name, f"URL scheme {parts.scheme!r} is not http or https")
    if not host:
        raise InputImageError(field_name, "URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InputImageError(field_name, "URL has an invalid port") from None
    if parts.username or parts.password:
        raise InputImageError(field_name, "URLs with credentials are not accepted")
    address = resolve_checked(host, port, field_name, policy)
    literal = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    return PinnedURL(target, host_header, extensions)


def fetch_url(url: str, field_name: str, policy: ImagePolicy) -> bytes:
    """GET an image URL with the SSRF guard, a total time limit and a size cap."""
    import httpx

    deadline = time.monotonic() + policy.fetch_timeout
    for _hop in range(policy.max_redirects + 1):
        pinned = pin_url(url, field_name, policy)
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            with httpx.Client(timeout=remaining, follow_redirects=False, trust_env=False) as client:
                with client.stream(
                    "GET",
                    pinned.target,
                    headers={"Host": pinned.host_header, "Accept": "image/*"},
                    extensions=pinned.extensions,
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InputImageError(field_name, f"URL answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > policy.max_bytes:
                        raise InputImageError(
                            field_name,
                            f"URL content is {declared} bytes, over the limit of {policy.max_bytes}",
                        )
                    chunks, total = [], 0
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > policy.max_bytes:
                            raise InputImageError(
                                field_name, f"URL content is over the limit of {policy.max_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise InputImageError(field_name, f"URL fetch took over {policy.fetch_timeout} s")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.TimeoutException:
            raise InputImageError(field_name, f"URL fetch timed out after {policy.fetch_timeout} s") from None
        except httpx.HTTPError as exc:
            raise InputImageError(field_name, f"URL fetch failed ({type(exc).__name__})") from None
    raise InputImageError(field_name, f"URL redirected more than {policy.max_redirects} times")


def decode_base64(text: str, field_name: str, policy: ImagePolicy) -> bytes:
    compact = re.sub(r"\s+", "", text)
    if len(compact) * 3 // 4 > policy.max_bytes + 3:
        raise InputImageError(field_name, f"image data is over the limit of {policy.max_bytes} bytes")
    if not compact:
        raise InputImageError(field_name, "image data is empty")
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InputImageError(field_name, "not valid base64, a data URL or an http(s) URL") from None


def image_bytes(value: str, field_name: str, policy: ImagePolicy) -> bytes:
    """Raw bytes of an image given as base64, a data URL or an http(s) URL; checked to decode as an image."""
    if not isinstance(value, str):
        raise InputImageError(field_name, "must be a string (base64, data URL or http(s) URL)")
    text = value.strip()
    lowered = text[:16].lower()
    if lowered.startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise InputImageError(field_name, "image URLs are disabled on this server; send base64")
        data = fetch_url(text, field_name, policy)
    elif lowered.startswith("data:"):
        match = _DATA_URL.match(text[:512])
        if match is None or not match.group("b64"):
            raise InputImageError(field_name, "data URL must be of the form data:image/...;base64,...")
        data = decode_base64(text[match.end() :], field_name, policy)
    else:
        data = decode_base64(text, field_name, policy)
    if len(data) > policy.max_bytes:
        raise InputImageError(field_name, f"image is {len(data)} bytes, over the limit of {policy.max_bytes}")
    load_image(data, name=field_name, max_pixels=policy.max_pixels)  # raises InputImageError naming the field
    return data
