"""The ASGI fast path of ``POST /recommendations``, the one route the app calls on every scroll.

Litestar's generic request path (a ``Request``, kwargs resolution, its own body
decoding and response building) cost about five times the page logic itself
(~150 µs against ~25 µs in process). This route middleware serves the common
case directly: read the body, decode it with the same msgspec schema and rules
as every other endpoint (:func:`feed_api.schemas.decode`), ask the service for
the page and send the pre-encoded JSON. Routing, the app's middleware (metrics,
rate limiting) and the OpenAPI description stay Litestar's: the ``@post``
handler it wraps is the documented contract, and it still answers whatever the
fast path does not take (no ``Content-Length``, or a body over the limit, which
Litestar answers with 413 before reading it).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from feed_api.errors import ApiError, send_json
from feed_api.request_rules import header
from feed_api.schemas import RecommendationsIn, decode
from feed_api.service import FeedService

_encoder = msgspec.json.Encoder()


def recommendations_fast_path(service: FeedService, max_body_bytes: int) -> Callable[..., ASGIApp]:
    """A handler-level middleware factory (Litestar calls it with ``app=`` the handler's own ASGI app)."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            length = _content_length(scope)
            if length is None or length > max_body_bytes:
                await app(scope, receive, send)
                return
            body = await _read_body(receive)
            if body is None:  # the client went away
                return
            try:
                page = await service.recommend(decode(body, RecommendationsIn))
                status, payload = 200, _encoder.encode(page)
            except ApiError as exc:
                # Answered here, not raised: raised, it would pass the metrics middleware before becoming a
                # response, and be counted as a 500.
                status, payload = exc.status, exc.body()
            await send_json(send, status, payload)

        return route

    return factory


def _content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
