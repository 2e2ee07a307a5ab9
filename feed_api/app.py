"""The app factory: wires the controllers, their services, middleware, lifespan, error mapping and OpenAPI.

``create_app()`` builds the app from the settings; ``python -m feed_api`` serves it.
The routes are in :mod:`feed_api.controllers`, the work in
:class:`feed_api.reader.FeedReader` and :class:`feed_api.live_updates.LiveUpdates`.
The OpenAPI schema is at ``/schema/openapi.json`` and browsable docs at ``/schema``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import torch
from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi.config import OpenAPIConfig

from feed_api.auth import auth_middleware
from feed_api.batcher import Busy
from feed_api.bodies import MAX_BODY_BYTES, locate, not_utf8
from feed_api.controllers import CONTROLLERS
from feed_api.dependencies import app_state, provide_reader, provide_updates
from feed_api.docs import docs_plugins_and_routes
from feed_api.errors import ApiError, too_deep
from feed_api.impression_log import ImpressionLog
from feed_api.keys import KeyStore
from feed_api.live_updates import LiveUpdates
from feed_api.openapi import finish_openapi
from feed_api.reader import FeedReader
from feed_api.request_rules import client_address, json_only_middleware, parse_networks
from feed_api.telemetry import Metrics, metrics_middleware
from rec_core.data.inbox import InboxWriteError
from rec_core.data.log_shipping import IMPRESSIONS
from rec_core.model.text_encoder import TextEncoder
from rec_core.settings import ApiSettings, PathSettings, Settings

log = logging.getLogger("feed_api")

RATE_LIMIT_SWEEP_S = 10.0


def create_app(settings: Settings | None = None, text_encoders: Mapping[str, TextEncoder] | None = None) -> Litestar:
    """The app; ``text_encoders``: encoders loaded before a fork (:func:`feed_api.forked_workers.serve_forked`)."""
    settings = settings or Settings.load()
    # Online work is one user or a few videos at a time: one torch thread each avoids the pool's
    # hand-offs, which cost more than the math at that size (measured: the user tower 31 -> 10 ms).
    torch.set_num_threads(settings.model.torch_threads or 1)
    telemetry = Metrics()
    updates = LiveUpdates(settings.paths, settings.batch, settings.model, settings.api, telemetry, text_encoders)
    impressions = None
    if settings.api.impressions == "on":
        impressions = ImpressionLog(
            settings.paths.impressions_dir,
            flush_s=settings.api.impression_flush_ms / 1000,
            pending_max=settings.api.impressions_pending_max,
            metrics=telemetry,
        )
    reader = FeedReader(
        settings.paths,
        settings.batch,
        settings.api,
        updates.registry,
        telemetry,
        activity=updates.activity,
        impressions=impressions,
    )
    docs_plugin, docs_routes = docs_plugins_and_routes()
    app = Litestar(
        route_handlers=[*CONTROLLERS, *docs_routes],
        state=app_state(reader, updates, telemetry),
        lifespan=[_lifespan],
        middleware=_middleware(settings.paths, settings.api, telemetry),
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
    return app


def _middleware(paths: PathSettings, api: ApiSettings, telemetry: Metrics) -> list[Any]:
    """Outermost first: every answer is counted; floods are limited before a key is even checked; the key
    before the body's type."""
    middleware: list[Any] = [metrics_middleware(telemetry)]
    if api.rate_limit:
        middleware.append(
            RateLimitConfig(
                rate_limit=("second", api.rate_limit),
                exclude=["/health", "/ready", "/metrics"],
                identifier_for_request=client_address(parse_networks(api.trusted_proxies)),
            ).middleware
        )
    keys = KeyStore(paths.keys_path)
    return [*middleware, auth_middleware(keys, host=api.host), json_only_middleware]


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    updates = provide_updates(app.state)
    impressions = provide_reader(app.state).impressions
    await updates.start()
    if impressions is not None:
        impressions.start()
    purge = asyncio.create_task(_purge_rate_limits(app), name="rate-limit-purge")
    try:
        yield
    finally:
        purge.cancel()
        if impressions is not None:
            await asyncio.to_thread(impressions.close)
        await updates.stop(closed={IMPRESSIONS: impressions.owns} if impressions is not None else None)


async def _purge_rate_limits(app: Litestar) -> None:
    """The limiter keeps one entry per client address and drops an expired one only when that client returns:
    without a sweep, every address ever seen stays in memory."""
    store = app.stores.get("rate_limit")
    while True:
        await asyncio.sleep(RATE_LIMIT_SWEEP_S)
        await store.delete_expired()  # type: ignore[attr-defined]


def _error_response(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
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
    if isinstance(exc, Busy):  # a flood outpaces the disk or the encoder: refused before anything was kept
        return ApiError(
            503, "busy", None, f"{exc}; nothing was kept", "retry in a second", headers={"Retry-After": "1"}
        )
    if isinstance(exc, RecursionError):  # msgspec's answer to `[[[[...` thousands deep, in Litestar's own decoding
        return too_deep()
    if isinstance(exc, UnicodeDecodeError):  # msgspec's answer to a string that is not UTF-8, likewise
        return not_utf8()
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
