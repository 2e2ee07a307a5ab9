"""The feed service: what each endpoint does, independent of HTTP.

It owns the process's state: the snapshots served (:mod:`feed_api.snapshots`),
what users did since the batch (:mod:`feed_api.user_state`), the inbox writer,
and the micro-batchers for the inbox and the video encoder. A background
thread picks up new snapshots and follows the inbox (records from other
workers, and on start-up everything the batch has not consumed yet).

Durability first (ARCHITECTURE.md, invariant 6): a write endpoint appends to
the inbox and fsyncs before it changes anything in memory and before it replies.
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
from feed_api.metrics import Metrics
from feed_api.pager import LiveVectors, first_cursor, next_page
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
from feed_api.video_encoding import encode_videos
from rec_core.cursor import CursorError, CursorSigner, cursor_secret
from rec_core.embedding import UserProfile
from rec_core.feed_policy import FeedPolicy
from rec_core.inbox import InboxRecord, InboxWriter, read_new
from rec_core.settings import Settings
from rec_core.snapshot_layout import SnapshotError, live_snapshot_id, snapshot_paths
from rec_core.text_encoder import TextEncoder

log = logging.getLogger(__name__)

Records = list[tuple[str, dict[str, Any]]]


class FeedService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Online work is one user or a few videos at a time: one torch thread each avoids the pool's
        # hand-offs, which cost more than the math at that size (measured: the user tower 31 -> 10 ms).
        torch.set_num_threads(settings.torch_threads or 1)
        self.signer = CursorSigner(cursor_secret(settings.cursor_secret, settings.data_dir))
        self.registry = SnapshotRegistry(settings, on_loaded=self._adopt_videos)
        self.users = UserStates()
        self.vectors = LiveVectors()
        self.metrics = Metrics()
        self.policy = FeedPolicy(feed_length=settings.feed_length)
        self.inbox = InboxWriter(settings.inbox_dir)
        self._encoders: dict[str, TextEncoder] = {}
        self._encoders_lock = threading.Lock()
        self._videos: dict[str, dict[str, Any]] = {}  # posted videos the batch has not taken in yet, by id
        self._videos_lock = threading.Lock()
        self._inbox_offsets: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox_batcher: MicroBatcher[Records, str] = MicroBatcher(self._append, name="inbox")
        self._video_batcher: MicroBatcher[dict[str, Any], np.ndarray] = MicroBatcher(
            self._index_videos, max_batch=32, name="videos"
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
                self._follow_inbox()
                self.registry.refresh()
            except Exception:  # the loop must survive anything; the next tick retries
                log.exception("background refresh failed")
            if self._stop.wait(interval):
                return

    # ---- reads -------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.registry.live is not None

    def live_view(self) -> SnapshotView:
        view = self.registry.live
        if view is None:
            reason = self.registry.last_error or "no snapshot has been published yet (run `make pipeline`)"
            raise ApiError(503, "not_ready", None, reason, "retry in a few seconds")
        return view

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

    async def add_video(self, req: VideoIn) -> VideoOut:
        view = self.live_view()
        payload = msgspec.structs.asdict(req)
        vector = await self._video_batcher.submit(payload)
        return VideoOut(
            video_id=req.video_id, snapshot_id=view.snapshot_id, embedding=[round(float(x), 6) for x in vector]
        )

    # ---- work done in threads ----------------------------------------------------------------------------------

    def _append(self, batch: list[Records]) -> list[str]:
        """One fsync for every request in the batch (group commit); returns each request's record time."""
        at = dt.datetime.now(dt.UTC)
        self.inbox.append_many([record for records in batch for record in records], at)
        return [at.isoformat()] * len(batch)

    def _index_videos(self, payloads: list[dict[str, Any]]) -> list[np.ndarray]:
        """Durable in the inbox, then encoded and searchable in the live collection; repeats are free."""
        view = self.live_view()
        with view.added.lock:
            known = {p["video_id"]: view.added.vectors.get(p["video_id"]) for p in payloads}
            fresh = [
                p
                for p in payloads
                if known[p["video_id"]] is None or view.added.payload_hash.get(p["video_id"]) != _hash(p)
            ]
        if fresh:
            self.inbox.append_many([("video", p) for p in fresh])
            self._encode_into(view, fresh)
            with self._videos_lock:
                self._videos.update({p["video_id"]: p for p in fresh})
            self.metrics.count("videos_indexed", len(fresh))
            self.metrics.count("video_batches")
        return [view.added.vectors[p["video_id"]] for p in payloads]

    def _encode_into(self, view: SnapshotView, payloads: list[dict[str, Any]]) -> None:
        last = {p["video_id"]: p for p in payloads}  # a batch may post one id twice: the last wins
        payloads = list(last.values())
        now = dt.datetime.now(dt.UTC)
        vectors = encode_videos(view, self._encoder(view), payloads, now)
        view.store.upsert([p["video_id"] for p in payloads], vectors)
        with view.added.lock:
            for p, vector in zip(payloads, vectors, strict=True):
                vid = p["video_id"]
                view.added.vectors[vid] = vector
                view.added.creators[vid] = p.get("creator_id") or vid
                view.added.created_ms[vid] = int(now.timestamp() * 1000)
                view.added.payload_hash[vid] = _hash(p)

    def _encoder(self, view: SnapshotView) -> TextEncoder:
        model = view.model.config.get("text_model", self.settings.text_model)
        with self._encoders_lock:  # seconds to load: once per process, not once per racing caller
            if model not in self._encoders:
                self._encoders[model] = TextEncoder(model)
            return self._encoders[model]

    def _adopt_videos(self, view: SnapshotView) -> None:
        """Before a snapshot goes live: load its text encoder, index the posted videos its batch did not include."""
        self._encoder(view)
        with self._videos_lock:
            for vid in [v for v in self._videos if v in view.video_code]:
                del self._videos[vid]  # the batch has it now
            missing = list(self._videos.values())
        for lo in range(0, len(missing), 256):
            self._encode_into(view, missing[lo : lo + 256])
        if missing:
            log.info("snapshot %s: %d videos posted since its batch indexed", view.snapshot_id, len(missing))

    def _follow_inbox(self) -> None:
        """Apply inbox records this process has not seen: at start every one the live snapshot does not reflect,
        then other workers'."""
        since = self._inbox_offsets if self._inbox_offsets is not None else self._replay_from()
        batch = read_new(self.settings.inbox_dir, since)
        self._inbox_offsets = {**(self._inbox_offsets or {}), **batch.offsets}
        videos: list[dict[str, Any]] = []
        for record in batch.records:
            self._apply(record, videos)
        if videos:
            with self._videos_lock:
                new = [v for v in videos if self._videos.get(v["video_id"]) != v]
                self._videos.update({v["video_id"]: v for v in new})
            view = self.registry.live
            if view is not None and new:
                with view.added.lock:
                    stale = [v for v in new if view.added.payload_hash.get(v["video_id"]) != _hash(v)]
                if stale:
                    self._encode_into(view, stale)

    def _replay_from(self) -> dict[str, int] | None:
        """Where a starting process replays the inbox from: the offsets the live snapshot's batch had taken in.

        Not what the batch has consumed by now: a batch that ingested the inbox but has not published yet
        would leave those events in the lake and out of every feed served. None (the consumed offsets) when
        there is no snapshot yet, or it was begun before snapshots recorded their offsets.
        """
        live = live_snapshot_id(self.settings)
        if live is None:
            return None
        try:
            offsets = snapshot_paths(self.settings, live).read_build().inbox_offsets
        except (OSError, ValueError, TypeError, SnapshotError) as exc:
            log.warning("cannot read the inbox offsets of snapshot %s (%s): replaying what is unconsumed", live, exc)
            return None
        return dict(offsets) if offsets is not None else None

    def _apply(self, record: InboxRecord, videos: list[dict[str, Any]]) -> None:
        data = record.data
        try:
            if record.kind == "event":
                self.users.apply_event(data, record.at.isoformat())
            elif record.kind == "user" and "watched_videos" in data:
                self.users.set_profile(
                    data["user_id"],
                    UserProfile(
                        watched=data["watched_videos"],
                        liked=data["liked_videos"],
                        followed=data["followed_users"],
                        avg_watch_time_s=data.get("average_watch_time"),
                        completion_rate=data.get("completion_rate"),
                    ),
                )
            elif record.kind == "video" and "caption" in data:
                videos.append(data)
        except (KeyError, TypeError, ValueError) as exc:  # a record written by something else: skip, say so
            log.warning("skipping an inbox record the API cannot read (%s): %s", exc, str(data)[:200])

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


def _hash(payload: dict[str, Any]) -> int:
    return hash(msgspec.json.encode(payload, order="sorted"))


def _created(view: SnapshotView) -> float:
    return dt.datetime.fromisoformat(view.build.created_at).timestamp()
