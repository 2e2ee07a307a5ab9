"""The feed service: what each endpoint does, independent of HTTP.

The read path is here (pages), and the writes' front: the inbox writer and the
micro-batchers for it and for the video encoder. The live-update side is in two
parts it owns: :class:`feed_api.inbox_follower.InboxFollower` (what users did
since the batch) and :class:`feed_api.posted_videos.PostedVideos` (videos no
snapshot has yet). A background thread picks up new snapshots and follows the
inbox (records from other workers, and on start-up everything the live snapshot
does not reflect).

Durability first (docs/architecture.md, invariant 6): a write endpoint appends to
the inbox and fsyncs before it changes anything in memory and before it replies;
an append that fails raises :class:`rec_core.data.inbox.InboxWriteError` unchanged to
the app's error handler (a 503), with nothing of it kept and nothing changed.

Bounded (invariant 9): user state (:mod:`feed_api.user_state`), the posted videos
kept searchable (``api_posted_videos_max``, oldest out first) and each inbox read
(``api_inbox_read_bytes`` a pass) all have a cap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from typing import Any

import msgspec
import numpy as np
import torch

from feed_api.batcher import MicroBatcher
from feed_api.errors import ApiError
from feed_api.inbox_follower import InboxFollower
from feed_api.metrics import Metrics
from feed_api.pager import LiveVectors, first_cursor, next_page
from feed_api.posted_videos import PostedVideos
from feed_api.schemas import (
    EventIn,
    EventsOut,
    RecommendationsIn,
    RecommendationsOut,
    UserIn,
    UserOut,
    VideoIn,
    VideoOut,
)
from feed_api.snapshot_view import SnapshotView
from feed_api.snapshots import SnapshotRegistry
from feed_api.user_state import UserStates
from rec_core.data.inbox import InboxWriter
from rec_core.feed.cursor import CursorError, CursorSigner, cursor_secret
from rec_core.feed.policy import FeedPolicy
from rec_core.model.inference import UserProfile
from rec_core.settings import Settings
from rec_core.snapshot.layout import live_snapshot_id

log = logging.getLogger(__name__)

Records = list[tuple[str, dict[str, Any]]]


class FeedService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Online work is one user or a few videos at a time: one torch thread each avoids the pool's
        # hand-offs, which cost more than the math at that size (measured: the user tower 31 -> 10 ms).
        torch.set_num_threads(settings.torch_threads or 1)
        self.signer = CursorSigner(cursor_secret(settings.cursor_secret, settings.data_dir), settings.cursor_ttl_s)
        self.vectors = LiveVectors()
        self.metrics = Metrics()
        self.policy = FeedPolicy(feed_length=settings.feed_length)
        self.inbox = InboxWriter(settings.inbox_dir)
        self.posted = PostedVideos(settings, self.inbox, self.metrics)
        self.follower = InboxFollower(settings, self.inbox, self.posted)
        self.registry = SnapshotRegistry(settings, on_loaded=self.posted.adopt)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox_batcher: MicroBatcher[Records, str] = MicroBatcher(self._append, name="inbox")
        self._video_batcher: MicroBatcher[tuple[dict[str, Any], bool], np.ndarray | ApiError] = MicroBatcher(
            lambda items: self.posted.index(self.live_view(), items), max_batch=32, name="videos"
        )

    # ---- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._inbox_batcher.start()
        self._video_batcher.start()
        self._thread = threading.Thread(target=self._background, name="snapshots+inbox", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await self._inbox_batcher.stop()
        await self._video_batcher.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self.registry.close()
        self.inbox.close()

    def _background(self) -> None:
        interval = self.settings.api_reload_ms / 1000
        while True:
            try:
                self.follower.follow(self.registry.live)
                self.registry.refresh()
            except Exception:  # the loop must survive anything; the next tick retries
                log.exception("background refresh failed")
            if self._stop.wait(interval):
                return

    # ---- reads -------------------------------------------------------------------------------------------------

    @property
    def users(self) -> UserStates:
        """What users did since the live snapshot's batch (kept by :class:`InboxFollower`)."""
        return self.follower.users

    @property
    def ready(self) -> bool:
        return self.registry.live is not None

    def live_view(self) -> SnapshotView:
        view = self.registry.live
        if view is None:
            raise ApiError(503, "not_ready", None, self._not_ready_reason(), "retry in a few seconds")
        return view

    def _not_ready_reason(self) -> str:
        if self.registry.last_error:
            return self.registry.last_error
        # Only while nothing is served: a file read per refused request costs nothing then.
        published = live_snapshot_id(self.settings)
        if published is not None:
            return f"snapshot {published} is loading"
        return "no snapshot has been published yet (run `make pipeline`)"

    async def recommend(self, req: RecommendationsIn) -> RecommendationsOut:
        user_id = req.user_id
        activity = self.users.copy_of(user_id)
        if req.cursor is None:
            view = self.live_view()
            has_vector = view.batch_vector(user_id) is not None or (
                activity is not None and (activity.profile is not None or activity.watches > 0)
            )
            cursor = first_cursor(view, user_id, has_vector=has_vector)
        else:
            try:
                cursor = self.signer.decode(req.cursor, user_id=user_id)
            except CursorError as exc:
                if exc.kind == "expired":
                    raise ApiError(
                        410,
                        "cursor_expired",
                        "cursor",
                        str(exc),
                        "restart from the first page: send the request again with cursor null",
                    ) from None
                code = {"wrong_user": "cursor_wrong_user", "tampered": "cursor_tampered"}.get(
                    exc.kind, "cursor_invalid"
                )
                raise ApiError(400, code, "cursor", str(exc), "start again with cursor null") from None
            view = self.registry.loaded(cursor.snapshot_id) or await asyncio.to_thread(
                self.registry.get, cursor.snapshot_id
            )
            if view is None:
                raise ApiError(
                    410,
                    "cursor_expired",
                    "cursor",
                    f"snapshot {cursor.snapshot_id} of this walk is no longer kept",
                    "restart from the first page: send the request again with cursor null",
                )

        def page() -> Any:
            return next_page(
                view, cursor, req.limit, activity, lambda: self.vectors.get(view, user_id, activity), self.policy
            )

        # The precomputed part is a few array slices: answer it on the event loop. Live search and the
        # user tower block for milliseconds: give them a thread.
        if self._precomputed_suffices(view, cursor, req.limit, activity):
            result = page()
        else:
            result = await asyncio.to_thread(page)
        self.metrics.page(result.source)
        return RecommendationsOut(
            items=result.items,
            has_more=result.has_more,
            next_cursor=self.signer.encode(result.cursor) if result.cursor is not None else None,
            snapshot_id=view.snapshot_id,
            source=result.source,
        )

    @staticmethod
    def _precomputed_suffices(view: SnapshotView, cursor: Any, limit: int, activity: Any) -> bool:
        if cursor.source == "feed":
            bounds = view.feeds.bounds(cursor.user_id)
            left = (bounds[1] - bounds[0] - cursor.position) if bounds else 0
        elif cursor.source == "trending":
            left = len(view.trending) - cursor.position
        else:
            return False
        return left > limit + (len(activity.seen) if activity else 0)

    # ---- writes ------------------------------------------------------------------------------------------------

    async def add_events(self, events: list[EventIn]) -> EventsOut:
        records = [("event", msgspec.structs.asdict(e)) for e in events]
        at = await self._inbox_batcher.submit(records)  # durable from here on
        for _, data in records:
            self.users.apply_event(data, at)
        self.metrics.count("events", len(records))
        return EventsOut(accepted=len(records))

    async def add_user(self, req: UserIn) -> UserOut:
        view = self.live_view()
        body = msgspec.structs.asdict(req)
        await self._inbox_batcher.submit([("user", body)])
        profile = UserProfile(
            watched=req.watched_videos,
            liked=req.liked_videos,
            followed=req.followed_users,
            avg_watch_time_s=req.average_watch_time,
            completion_rate=req.completion_rate,
        )
        self.users.set_profile(req.user_id, profile)
        online = await asyncio.to_thread(view.profile_vector, profile)
        return UserOut(
            user_id=req.user_id,
            snapshot_id=view.snapshot_id,
            embedding=[round(float(x), 6) for x in online.vector],
            ignored_video_ids=online.unknown_video_ids,
            unknown_followed_users=online.unknown_creator_ids,
        )

    async def add_video(self, req: VideoIn, *, may_update: bool = False) -> VideoOut:
        """Encode and index a posted video. An id the catalogue or an earlier post already has is refused (409)
        unless the caller may update videos; the same body posted again is answered as before, writing nothing,
        so a client may retry a post whose answer it lost."""
        view = self.live_view()
        payload = msgspec.structs.asdict(req)
        vector = await self._video_batcher.submit((payload, may_update))
        if isinstance(vector, ApiError):
            raise vector
        return VideoOut(
            video_id=req.video_id, snapshot_id=view.snapshot_id, embedding=[round(float(x), 6) for x in vector]
        )

    # ---- work done in threads ----------------------------------------------------------------------------------

    def _append(self, batch: list[Records]) -> list[str]:
        """One fsync for every request in the batch (group commit); returns each request's record time."""
        at = dt.datetime.now(dt.UTC)
        self.inbox.append_many([record for records in batch for record in records], at)
        return [at.isoformat()] * len(batch)

    def gauges(self) -> dict[str, tuple[float, dict[str, str]]]:
        view = self.registry.live
        out: dict[str, tuple[float, dict[str, str]]] = {
            "ready": (1.0 if view else 0.0, {}),
            "users_tracked": (float(len(self.users)), {}),
            "snapshots_loaded": (float(len(self.registry.views())), {}),
        }
        if view is not None:
            out["snapshot_info"] = (1.0, {"snapshot_id": view.snapshot_id, "model_version": view.build.model_version})
            out["snapshot_age_seconds"] = (round(time.time() - _created(view), 3), {})
            out["videos_added_live"] = (float(len(view.added.vectors)), {})
        return out


def _created(view: SnapshotView) -> float:
    return dt.datetime.fromisoformat(view.build.created_at).timestamp()
