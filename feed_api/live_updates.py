"""The live-update side: what arrives between batches, made durable, then served.

* ``POST /events`` and ``POST /embeddings/user``: appended to the inbox, then
  applied to the user state that pages read;
* ``POST /embeddings/video``: :class:`feed_api.posted_videos.PostedVideos`
  (refused, or made durable, encoded and searchable), one forward pass per
  micro-batch;
* a background thread that follows the inbox
  (:class:`feed_api.inbox_follower.InboxFollower`: other workers' records, and
  on start-up everything the live snapshot does not reflect) and picks up new
  snapshots (:class:`feed_api.snapshots.SnapshotRegistry`, which the read path
  reads).

Durability first (docs/architecture.md, invariant 6): a write appends to the
inbox and fsyncs (one fsync per micro-batch of requests, a group commit) before
it changes anything in memory and before it replies; an append that fails
raises :class:`rec_core.data.inbox.InboxWriteError` unchanged to the app's
error handler (a 503), with nothing of it kept and nothing changed.

Bounded (invariant 9): user state (:mod:`feed_api.user_state`), the posted
videos kept searchable (``api_posted_videos_max``, oldest out first), the
writes waiting for their batch (``api_writes_waiting_max``; past it a 503
``busy``, nothing kept) and each inbox read (``api_inbox_read_bytes`` a pass)
all have a cap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import numpy as np

from feed_api.batcher import MicroBatcher
from feed_api.bodies import EventIn, EventsOut, UserIn, UserOut, VideoIn, VideoOut, user_profile
from feed_api.errors import ApiError
from feed_api.inbox_follower import InboxFollower
from feed_api.live_snapshot import live_view
from feed_api.posted_videos import PostedVideos
from feed_api.snapshots import SnapshotRegistry
from feed_api.telemetry import Metrics
from feed_api.user_state import UserActivity, UserStates
from rec_core.data.inbox import SEGMENT_MAX_AGE_S, InboxWriter
from rec_core.data.log_shipping import INBOX, log_shippers
from rec_core.model.text_encoder import TextEncoder
from rec_core.settings import ApiSettings, BatchSettings, ModelSettings, PathSettings

log = logging.getLogger(__name__)

Records = list[tuple[str, dict[str, Any]]]


class LiveUpdates:
    def __init__(
        self,
        paths: PathSettings,
        batch: BatchSettings,
        model: ModelSettings,
        api: ApiSettings,
        metrics: Metrics,
        text_encoders: Mapping[str, TextEncoder] | None = None,
    ) -> None:
        """Every section, each handed to the part that reads it: the inbox and the snapshots (``paths``), how many
        snapshots stay loaded (``batch``), the posted videos' text encoder (``model``; ``text_encoders`` already
        loaded), the bounds and the refresh interval (``api``)."""
        self._paths = paths
        self._reload_s = api.reload_ms / 1000
        self._metrics = metrics
        self.inbox = InboxWriter(paths.inbox_dir)
        self.posted = PostedVideos(model, api, self.inbox, metrics, text_encoders, paths.text_graphs_dir)
        self.follower = InboxFollower(paths, api, self.inbox, self.posted)
        self.registry = SnapshotRegistry(paths, batch, on_loaded=self.posted.adopt)
        # With the lake on an object store, what this machine wrote is copied there for the batch to read.
        self._shippers = log_shippers(paths)
        self._last_drop = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        waiting = api.writes_waiting_max
        self._inbox_batcher: MicroBatcher[Records, str] = MicroBatcher(self._append, max_waiting=waiting, name="inbox")
        self._video_batcher: MicroBatcher[tuple[dict[str, Any], bool], np.ndarray | ApiError] = MicroBatcher(
            lambda items: self.posted.index(live_view(self.registry, paths), items),
            max_batch=32,
            max_waiting=waiting,
            name="videos",
        )

    # ---- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # The live snapshot and the activity since it before this process answers anything (uvicorn accepts only
        # after start-up): a worker forked again after a crash shares the listening socket with the others, and
        # must not take requests from them only to answer "loading".
        await asyncio.to_thread(self._catch_up)
        self._inbox_batcher.start()
        self._video_batcher.start()
        self._thread = threading.Thread(target=self._background, name="snapshots+inbox", daemon=True)
        self._thread.start()

    async def stop(self, closed: Mapping[str, Callable[[str], bool]] | None = None) -> None:
        """Stop, and ship what is left. ``closed``: other logs' writers this process has closed (log name -> whether
        it wrote a segment), whose segments are sealed with the inbox's own."""
        self._stop.set()
        await self._inbox_batcher.stop()
        await self._video_batcher.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self.registry.close()
        self.inbox.close()
        # What the last requests and impression flush wrote; this process's segments are final: sealed now, not
        # after two idle hours, so a host that never comes back leaves nothing the batch cannot prune.
        await asyncio.to_thread(self._ship, {INBOX: self.inbox.owns, **(closed or {})})

    def _catch_up(self) -> None:
        try:
            self.registry.refresh()
            self.follower.follow(self.registry.live)
        except Exception:  # the background loop retries; start-up must not fail for a snapshot
            log.exception("loading the live snapshot at start-up failed")

    def _background(self) -> None:
        while True:
            try:
                self.follower.follow(self.registry.live)
                self.registry.refresh()
            except Exception:  # the loop must survive anything; the next tick retries
                log.exception("background refresh failed")
            self._ship()
            if self._stop.wait(self._reload_s):
                return

    def _ship(self, final: Mapping[str, Callable[[str], bool]] | None = None) -> None:
        """Ship every log; ``final`` (at shutdown): each log's closed writer, whose segments are sealed."""
        drop = time.monotonic() - self._last_drop > SEGMENT_MAX_AGE_S
        for shipper in self._shippers:
            try:
                shipper.ship(wait=final is not None, closed=(final or {}).get(shipper.log_name))
                if drop:
                    shipper.drop_pruned()
            except Exception:  # the store is down: the lines stay here, durable, and ship on a later tick
                log.exception("shipping %s to the object store failed; will retry", shipper.log_name)
        if drop:
            self._last_drop = time.monotonic()

    # ---- what the read path reads ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.registry.live is not None

    @property
    def users(self) -> UserStates:
        """What users did since the live snapshot's batch (kept by :class:`InboxFollower`)."""
        return self.follower.users

    def activity(self, user_id: str) -> UserActivity | None:
        """A private copy of the user's activity since the batch, for one page."""
        return self.follower.users.copy_of(user_id)

    # ---- writes ------------------------------------------------------------------------------------------------

    async def add_events(self, events: list[EventIn]) -> EventsOut:
        records = [("event", msgspec.structs.asdict(e)) for e in events]
        at = await self._inbox_batcher.submit(records)  # durable from here on
        for _, data in records:
            self.users.apply_event(data, at)
        self._metrics.count("events", len(records))
        return EventsOut(accepted=len(records))

    async def add_user(self, req: UserIn) -> UserOut:
        view = live_view(self.registry, self._paths)
        # The vector the user's feed will use: in the space of their experiment arm's model.
        view = view.in_space(view.assignment.of(req.user_id) if view.assignment else None)
        body = msgspec.structs.asdict(req)
        await self._inbox_batcher.submit([("user", body)])
        profile = user_profile(body)
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
        view = live_view(self.registry, self._paths)
        payload = msgspec.structs.asdict(req)
        vector = await self._video_batcher.submit((payload, may_update))
        if isinstance(vector, ApiError):
            raise vector
        return VideoOut(
            video_id=req.video_id, snapshot_id=view.snapshot_id, embedding=[round(float(x), 6) for x in vector]
        )

    def _append(self, batch: list[Records]) -> list[str]:
        """One fsync for every request in the batch (group commit); returns each request's record time."""
        at = dt.datetime.now(dt.UTC)
        self.inbox.append_many([record for records in batch for record in records], at)
        return [at.isoformat()] * len(batch)
