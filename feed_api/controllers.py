"""The routes: one controller per part of the API, each given the services it needs (:mod:`feed_api.dependencies`).

Every route states the scope a key needs in its ``opt`` (:mod:`feed_api.auth`);
the OpenAPI document is finished in :mod:`feed_api.openapi`. The work is in
:class:`feed_api.reader.FeedReader` (pages) and
:class:`feed_api.live_updates.LiveUpdates` (everything written).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from litestar import Controller, MediaType, Request, Response, get, head, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from litestar.types import Dependencies

from feed_api.auth import principal_of
from feed_api.bodies import (
    MAX_LIMIT,
    EventsOut,
    RecommendationsIn,
    RecommendationsOut,
    UserIn,
    UserOut,
    VideoIn,
    VideoOut,
    decode_events,
)
from feed_api.dependencies import READER, TELEMETRY, UPDATES
from feed_api.live_updates import LiveUpdates
from feed_api.page_route import recommendations_fast_path
from feed_api.reader import FeedReader
from feed_api.telemetry import Metrics, gauges

PUBLIC = {"public": True}  # probes a load balancer calls without a key


class OpsController(Controller):
    path = "/"
    tags: ClassVar[list[str]] = ["ops"]
    dependencies: ClassVar[Dependencies] = {"reader": READER, "updates": UPDATES, "telemetry": TELEMETRY}

    @get("/health", summary="Alive", description="200 as long as the process answers.", opt=PUBLIC)
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        summary="Serving a snapshot",
        description="200 with the live snapshot; 503 before one is loaded.",
        opt=PUBLIC,
    )
    async def ready(self, reader: NamedDependency[FeedReader]) -> dict[str, Any]:
        view = reader.live_view()
        return {"status": "ready", "snapshot_id": view.snapshot_id, "model_version": view.build.model_version}

    # HEAD for the probes of load balancers that ask that way (a 405 reads as down): the same answer, no body.
    @head("/health", opt=PUBLIC, include_in_schema=False)
    async def health_head(self) -> None:
        return None

    @head("/ready", opt=PUBLIC, include_in_schema=False)
    async def ready_head(self, reader: NamedDependency[FeedReader]) -> None:
        reader.live_view()  # 503 before a snapshot is loaded, as GET /ready

    @get("/metrics", media_type=MediaType.TEXT, summary="Prometheus metrics", opt={"scope": "metrics:read"})
    async def metrics(self, telemetry: NamedDependency[Metrics], updates: NamedDependency[LiveUpdates]) -> str:
        return telemetry.render(gauges(updates.registry, updates.users))


class FeedController(Controller):
    path = "/recommendations"
    tags: ClassVar[list[str]] = ["feed"]
    dependencies: ClassVar[Dependencies] = {"reader": READER}

    @post(
        status_code=HTTP_200_OK,
        summary="A page of a user's feed",
        description=(
            f"`limit` is 1 to {MAX_LIMIT} (default 20). Pass the previous page's `next_cursor` to continue; "
            "`has_more` is false only when the catalogue is exhausted for this user. 400 for a tampered cursor or "
            "one of another user; 410 `cursor_expired` when the walk's snapshot is no longer kept (restart with "
            "`cursor: null`)."
        ),
        opt={"scope": "feed:read"},
        responses={200: ResponseSpec(data_container=RecommendationsOut, description="A page of the feed")},
        middleware=[recommendations_fast_path],
    )
    async def recommendations(
        self, data: JSONBody[RecommendationsIn], reader: NamedDependency[FeedReader]
    ) -> Response[bytes]:
        # Reached only for what the fast path leaves to Litestar (no Content-Length, or a body over the limit).
        page = await reader.recommend(data)
        return Response(msgspec.json.encode(page), media_type=MediaType.JSON)


class EventsController(Controller):
    path = "/events"
    tags: ClassVar[list[str]] = ["events"]
    dependencies: ClassVar[Dependencies] = {"updates": UPDATES}

    @post(
        status_code=HTTP_200_OK,
        summary="Interactions",
        description=(
            'One event object, or `{"events": [...]}` with up to 10,000. Durable (fsync\'d in the inbox) before the '
            "reply; a watched or skipped video leaves the user's feed at once."
        ),
        opt={"scope": "events:write"},
    )
    async def events(self, request: Request[Any, Any, Any], updates: NamedDependency[LiveUpdates]) -> EventsOut:
        # Read raw: one event or a batch, which Litestar's one-type `data` cannot express.
        return await updates.add_events(decode_events(await request.body()))


class EmbeddingsController(Controller):
    """What is added between batches and searchable at once: a user's history, a posted video."""

    path = "/embeddings"
    tags: ClassVar[list[str]] = ["embeddings"]
    dependencies: ClassVar[Dependencies] = {"updates": UPDATES}

    @post(
        "/video",
        status_code=HTTP_200_OK,
        summary="Add or update a video",
        description=(
            "Encoded and searchable at once; durable in the inbox for the next batch. A video_id already in the "
            "catalogue or posted before is refused (409 `video_exists`) unless the key has `videos:update`."
        ),
        opt={"scope": "videos:write"},
    )
    async def embed_video(
        self, data: JSONBody[VideoIn], request: Request[Any, Any, Any], updates: NamedDependency[LiveUpdates]
    ) -> VideoOut:
        may_update = principal_of(request.scope).allows("videos:update")
        return await updates.add_video(data, may_update=may_update)

    @post(
        "/user",
        status_code=HTTP_200_OK,
        summary="A user's vector from their history",
        description=(
            "The user tower online; kept for live search and durable in the inbox. "
            "Unknown video ids are ignored and listed in the reply."
        ),
        opt={"scope": "events:write"},
    )
    async def embed_user(self, data: JSONBody[UserIn], updates: NamedDependency[LiveUpdates]) -> UserOut:
        return await updates.add_user(data)


CONTROLLERS = [OpsController, FeedController, EventsController, EmbeddingsController]
