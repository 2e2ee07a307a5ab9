"""Rules every request meets before a handler sees it: JSON bodies only, and who the client is.

* A body must be declared JSON (``Content-Type: application/json``), else 415.
  Browsers send ``text/plain`` and form types across origins without a CORS
  preflight; refusing them keeps a web page from posting events on a user's
  behalf to an API it can reach.
* The client's address, for rate limiting, is the connection's peer. Only when
  that peer is a trusted proxy (``REC_API_TRUSTED_PROXIES``) is
  ``X-Forwarded-For`` read, right to left, skipping further trusted proxies:
  anything left of the first untrusted hop was written by the client and is
  not evidence of anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.types import ASGIApp, Receive, Scope, Send

from feed_api.errors import ApiError, send_error

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def json_only_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS and not _is_json(scope):
            await send_error(
                send,
                ApiError(
                    415,
                    "unsupported_media_type",
                    "Content-Type",
                    "request bodies must be JSON: send `Content-Type: application/json`",
                ),
            )
            return
        await app(scope, receive, send)

    return middleware


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as ASGI gives names), read straight from the scope: the
    guards and the page fast path run before Litestar builds a request."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _is_json(scope: Scope) -> bool:
    value = header(scope, b"content-type")
    if value is None:
        return False
    media = value.decode("latin-1").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse_networks(text: str) -> tuple[Network, ...]:
    """``REC_API_TRUSTED_PROXIES``: addresses or CIDR networks, comma-separated; raises ValueError naming a bad one."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"REC_API_TRUSTED_PROXIES: {part!r} is not an address or network") from None
    return tuple(networks)


def client_address(trusted: tuple[Network, ...]) -> Callable[[Request[Any, Any, Any]], str]:
    """The rate limiter's key for a request: the first address, from the right, that is not a trusted proxy."""

    def trusted_hop(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    def identify(request: Request[Any, Any, Any]) -> str:
        peer = request.client.host if request.client else "unknown"
        if not trusted or not trusted_hop(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("x-forwarded-for", [])).split(",") if h.strip()]
        for hop in reversed(hops):
            if not trusted_hop(hop):
                return hop
        return hops[0] if hops else peer

    return identify
