"""The Litestar app: routes, error mapping, limits, OpenAPI. The work is in :mod:`feed_api.service`.

``create_app()`` builds the app from the settings; ``python -m feed_api`` serves it.
The OpenAPI schema is at ``/schema/openapi.json`` and browsable docs at ``/schema``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK

from feed_api.auth import auth_middleware, principal_of
from feed_api.docs import docs_plugins_and_routes
from feed_api.errors import ApiError, too_deep
from feed_api.keys import KeyStore
from feed_api.metrics import metrics_middleware
from feed_api.openapi import finish_openapi
from feed_api.page_route import recommendations_fast_path
from feed_api.request_rules import client_address, json_only_middleware, parse_networks
from feed_api.schemas import (
    MAX_LIMIT,
    EventIn,
    EventsIn,
    EventsOut,
    RecommendationsIn,
    RecommendationsOut,
    UserIn,
    UserOut,
    VideoIn,
    VideoOut,
    decode,
    locate,
)
from feed_api.service import FeedService
from rec_core.data.inbox import InboxWriteError
from rec_core.settings import Settings

log = logging.getLogger("feed_api")

MAX_BODY_BYTES = 1 << 20
RATE_LIMIT_SWEEP_S = 10.0
PUBLIC = {"public": True}  # probes a load balancer calls without a key


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.load()
    keys = KeyStore(settings.keys_path)
    trusted_proxies = parse_networks(settings.api_trusted_proxies)
    service = FeedService(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        purge = asyncio.create_task(_purge_rate_limits(app), name="rate-limit-purge")
        try:
            yield
        finally:
            purge.cancel()
            await service.stop()

    @get("/health", summary="Alive", description="200 as long as the process answers.", tags=["ops"], opt=PUBLIC)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        summary="Serving a snapshot",
        description="200 with the live snapshot; 503 before one is loaded.",
        tags=["ops"],
        opt=PUBLIC,
    )
    async def ready() -> dict[str, Any]:
        view = service.live_view()
        return {"status": "ready", "snapshot_id": view.snapshot_id, "model_version": view.build.model_version}

    @get(
        "/metrics", media_type=MediaType.TEXT, summary="Prometheus metrics", tags=["ops"], opt={"scope": "metrics:read"}
    )
    async def metrics() -> str:
        return service.metrics.render(service.gauges())

    @post(
        "/recommendations",
        status_code=HTTP_200_OK,
        summary="A page of a user's feed",
        description=(
            f"`limit` is 1 to {MAX_LIMIT} (default 20). Pass the previous page's `next_cursor` to continue; "
            "`has_more` is false only when the catalogue is exhausted for this user. 400 for a tampered cursor or "
            "one of another user; 410 `cursor_expired` when the walk's snapshot is no longer kept (restart with "
            "`cursor: null`)."
        ),
        tags=["feed"],
        opt={"scope": "feed:read"},
        responses={200: ResponseSpec(data_container=RecommendationsOut, description="A page of the feed")},
        middleware=[recommendations_fast_path(service, MAX_BODY_BYTES)],
    )
    async def recommendations(data: RecommendationsIn) -> Response[bytes]:
        # Reached only for what the fast path leaves to Litestar (no Content-Length, or a body over the limit).
        page = await service.recommend(data)
        return Response(msgspec.json.encode(page), media_type=MediaType.JSON)

    @post(
        "/events",
        status_code=HTTP_200_OK,
        summary="Interactions",
        description=(
            'One event object, or `{"events": [...]}` with up to 10,000. Durable (fsync\'d in the inbox) before the '
            "reply; a watched or skipped video leaves the user's feed at once."
        ),
        tags=["events"],
        opt={"scope": "events:write"},
    )
    async def events(request: Request) -> EventsOut:
        raw = await request.body()
        batch = _decode_events(raw)
        return await service.add_events(batch)

    @post(
        "/embeddings/video",
        status_code=HTTP_200_OK,
        summary="Add or update a video",
        description=(
            "Encoded and searchable at once; durable in the inbox for the next batch. A video_id already in the "
            "catalogue or posted before is refused (409 `video_exists`) unless the key has `videos:update`."
        ),
        tags=["embeddings"],
        opt={"scope": "videos:write"},
    )
    async def embed_video(data: VideoIn, request: Request) -> VideoOut:
        may_update = principal_of(request.scope).allows("videos:update")
        return await service.add_video(data, may_update=may_update)

    @post(
        "/embeddings/user",
        status_code=HTTP_200_OK,
        summary="A user's vector from their history",
        description=(
            "The user tower online; kept for live search and durable in the inbox. "
            "Unknown video ids are ignored and listed in the reply."
        ),
        tags=["embeddings"],
        opt={"scope": "events:write"},
    )
    async def embed_user(data: UserIn) -> UserOut:
        return await service.add_user(data)

    # Outermost first: every answer is counted; floods are limited before a key is even checked; the key
    # before the body's type.
    middleware: list[Any] = [metrics_middleware(service.metrics)]
    if settings.api_rate_limit:
        middleware.append(
            RateLimitConfig(
                rate_limit=("second", settings.api_rate_limit),
                exclude=["/health", "/ready", "/metrics"],
                identifier_for_request=client_address(trusted_proxies),
            ).middleware
        )
    middleware += [auth_middleware(keys, host=settings.api_host), json_only_middleware]
    docs_plugin, docs_routes = docs_plugins_and_routes()
    app = Litestar(
        route_handlers=[health, ready, metrics, recommendations, events, embed_video, embed_user, *docs_routes],
        lifespan=[lifespan],
        middleware=middleware,
        exception_handlers={Exception: _error_response},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Feed API",
            version="1.0.0",
            description="Pages of each user's short-video feed, live fallback search, and interactions.",
            path="/schema",
            render_plugins=[docs_plugin],
        ),
        debug=False,
    )
    finish_openapi(app.openapi_schema)
    app.state.service = service
    return app


async def _purge_rate_limits(app: Litestar) -> None:
    """The limiter keeps one entry per client address and drops an expired one only when that client returns:
    without a sweep, every address ever seen stays in memory."""
    store = app.stores.get("rate_limit")
    while True:
        await asyncio.sleep(RATE_LIMIT_SWEEP_S)
        await store.delete_expired()  # type: ignore[attr-defined]


def _decode_events(raw: bytes) -> list[EventIn]:
    try:
        head = msgspec.json.decode(raw) if raw.strip() else None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", "body", f"not valid JSON: {exc}") from None
    if isinstance(head, dict) and "events" in head:
        return decode(raw, EventsIn).events
    return [decode(raw, EventIn)]


def _error_response(_: Request, exc: Exception) -> Response[bytes]:
    error = _as_api_error(exc)
    return Response(error.body(), status_code=error.status, media_type=MediaType.JSON, headers=error.headers)


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InboxWriteError):  # a full or failing disk: nothing was kept, the client may retry
        log.error("inbox write failed: %s", exc)
        return ApiError(
            503, "inbox_unavailable", None, "the write could not be made durable; nothing was kept", "retry shortly"
        )
    if isinstance(exc, RecursionError):  # msgspec's answer to `[[[[...` thousands deep, in Litestar's own decoding
        return too_deep()
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) and exc.extra else [{}]
        first = extra[0] if isinstance(extra[0], dict) else {}
        field, reason = locate(str(first.get("key") or ""), str(first.get("message") or exc.detail))
        return ApiError(400, "invalid_field", field, reason)
    if isinstance(exc, HTTPException) and exc.status_code == 400:  # Litestar's own body parsing: malformed JSON
        return ApiError(400, "invalid_json", "body", str(exc.detail))
    if isinstance(exc, HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 429: "rate_limited"}
        reasons = {413: f"request bodies are limited to {MAX_BODY_BYTES} bytes (1 MiB)"}
        code = codes.get(exc.status_code, "http_error")
        field = "body" if exc.status_code == 413 else None
        return ApiError(exc.status_code, code, field, reasons.get(exc.status_code, exc.detail))
    log.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", None, "the server failed on this request; it has been logged")
