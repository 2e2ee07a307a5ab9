"""The ASGI fast path of ``POST /recommendations``, the one route the app calls on every scroll.

Litestar's generic request path (a ``Request``, kwargs resolution, its own body
decoding and response building) cost about five times the page logic itself
(~150 µs against ~25 µs in process). This route middleware serves the common
case directly: read the body, decode it with the same msgspec schema and rules
as every other endpoint (:func:`feed_api.bodies.decode`), ask the read path
(:class:`feed_api.reader.FeedReader`, from the app's state) for the page and
send the pre-encoded JSON. Routing, the app's middleware (metrics,
rate limiting) and the OpenAPI description stay Litestar's: the ``@post``
handler it wraps is the documented contract, and it still answers whatever the
fast path does not take (no ``Content-Length``, or a body over the limit, which
Litestar answers with 413 before reading it).
"""

from __future__ import annotations

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from feed_api.bodies import MAX_BODY_BYTES, RecommendationsIn, decode
from feed_api.dependencies import provide_reader
from feed_api.errors import ApiError, send_json
from feed_api.request_rules import header

_encoder = msgspec.json.Encoder()


def recommendations_fast_path(app: ASGIApp) -> ASGIApp:
    """A handler-level middleware (Litestar calls it with the handler's own ASGI app)."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        length = _content_length(scope)
        if length is None or length > MAX_BODY_BYTES:
            await app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        try:
            page = await provide_reader(scope["litestar_app"].state).recommend(decode(body, RecommendationsIn))
            status, payload = 200, _encoder.encode(page)
        except ApiError as exc:
            # Answered here, not raised: raised, it would pass the metrics middleware before becoming a
            # response, and be counted as a 500.
            status, payload = exc.status, exc.body()
        await send_json(send, status, payload)

    return route


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
