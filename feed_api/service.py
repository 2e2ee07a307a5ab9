"""The feed service: what each endpoint does, independent of HTTP.

It owns the process's state: the snapshots served (:mod:`feed_api.snapshots`),
what users did since the batch (:mod:`feed_api.user_state`), the inbox writer,
and the micro-batchers for the inbox and the video encoder. A background
thread picks up new snapshots and follows the inbox (records from other
workers, and on start-up everything the batch has not consumed yet).

Durability first (ARCHITECTURE.md, invariant 6): a write endpoint appends to
the inbox and fsyncs before it changes anything in memory and before it replies;
an append that fails raises :class:`rec_core.inbox.InboxWriteError` unchanged to
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
from collections import OrderedDict
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
from rec_core.ids import id_problem
from rec_core.inbox import InboxRecord, InboxWriter, consumed_offsets, read_new
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
        self.signer = CursorSigner(cursor_secret(settings.cursor_secret, settings.data_dir), settings.cursor_ttl_s)
        self.registry = SnapshotRegistry(settings, on_loaded=self._adopt_videos)
        self.users = UserStates(settings.api_users_max, settings.api_user_videos_max)
        self._users_of: str | None = None  # the snapshot whose inbox offsets self.users was replayed from
        self.vectors = LiveVectors()
        self.metrics = Metrics()
        self.policy = FeedPolicy(feed_length=settings.feed_length)
        self.inbox = InboxWriter(settings.inbox_dir)
        self._encoders: dict[str, TextEncoder] = {}
        self._encoders_lock = threading.Lock()
        # Posted videos the batch has not taken in yet, by id, oldest first: the ones live search drops first.
        self._videos: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._videos_lock = threading.Lock()
        self._inbox_offsets: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox_batcher: MicroBatcher[Records, str] = MicroBatcher(self._append, name="inbox")
        self._video_batcher: MicroBatcher[tuple[dict[str, Any], bool], np.ndarray | ApiError] = MicroBatcher(
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

    def _index_videos(self, items: list[tuple[dict[str, Any], bool]]) -> list[np.ndarray | ApiError]:
        """Refuse what may not be posted, make the rest durable in the inbox, then encode it and make it
        searchable in the live collection. The check runs here, one batch at a time, so two racing posts of
        one new id cannot both pass it; and before the append, so a refused post writes nothing."""
        view = self.live_view()
        answers: list[np.ndarray | ApiError | None] = [None] * len(items)
        fresh: dict[str, dict[str, Any]] = {}  # id -> payload to write and encode, in this batch
        with view.added.lock:
            for i, (payload, may_update) in enumerate(items):
                vid, digest = payload["video_id"], _hash(payload)
                if vid in fresh:
                    same = _hash(fresh[vid]) == digest
                elif view.added.payload_hash.get(vid) == digest:
                    answers[i] = view.added.vectors[vid]  # the same post again: nothing to write
                    continue
                else:
                    same = False
                exists = vid in fresh or vid in view.video_code or vid in view.added.vectors
                if exists and not same and not may_update:
                    answers[i] = ApiError(
                        409,
                        "video_exists",
                        "video_id",
                        f"video {vid!r} already exists",
                        "post it under a new video_id; changing an existing video needs a key with videos:update",
                    )
                elif not same:
                    fresh[vid] = payload  # a batch may post one id twice (may_update): the last wins
        if fresh:
            self.inbox.append_many([("video", p) for p in fresh.values()])
            vectors = self._encode_into(view, list(fresh.values()))
            self._remember_videos(view, list(fresh.values()))
            self.metrics.count("videos_indexed", len(fresh))
            self.metrics.count("video_batches")
            for i, (payload, _) in enumerate(items):
                if answers[i] is None:
                    answers[i] = vectors[payload["video_id"]]
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    def _encode_into(self, view: SnapshotView, payloads: list[dict[str, Any]]) -> dict[str, np.ndarray]:
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
        return {p["video_id"]: vector for p, vector in zip(payloads, vectors, strict=True)}

    def _remember_videos(self, view: SnapshotView | None, payloads: list[dict[str, Any]]) -> None:
        """Keep posted videos for the next snapshots to index; past ``api_posted_videos_max`` the oldest leave
        live search (the inbox still has them: the next batch takes them into the catalogue)."""
        with self._videos_lock:
            for p in payloads:
                self._videos[p["video_id"]] = p
                self._videos.move_to_end(p["video_id"])
            evicted = []
            while len(self._videos) > self.settings.api_posted_videos_max:
                evicted.append(self._videos.popitem(last=False)[0])
        if evicted and view is not None:
            self._forget_added(view, evicted)
            log.info("%d posted videos left live search (over api_posted_videos_max)", len(evicted))

    @staticmethod
    def _forget_added(view: SnapshotView, ids: list[str]) -> None:
        with view.added.lock:
            ids = [v for v in ids if v in view.added.vectors]
            for vid in ids:
                for table in (view.added.vectors, view.added.creators, view.added.created_ms, view.added.payload_hash):
                    table.pop(vid, None)
        gone = [v for v in ids if v not in view.video_code]
        view.store.delete(gone)
        updated = [v for v in ids if v in view.video_code]  # a catalogue video a post changed: back to the snapshot's
        if updated:
            view.store.upsert(updated, view.video_vectors[[view.video_code[v] for v in updated]])

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

    # ---- following the inbox -----------------------------------------------------------------------------------

    def _follow_inbox(self) -> None:
        """Keep ``self.users`` equal to the inbox replayed from where the live snapshot's batch stopped reading it.

        That one rule covers the start-up replay and what a new snapshot makes stale. The new snapshot's
        ``build.json`` records the inbox offsets its batch had taken into the lake; its feeds already leave out
        every video those records name, so the activity they carry is dropped, and the activity after them is
        kept. Exactly that is what a replay from those offsets into an empty state gives, so on a new live
        snapshot the state is rebuilt that way, off to the side, and swapped in. (A rule by record time would
        be simpler but wrong: the snapshot does not record when its batch read the inbox, and writers stamp
        records a moment before they append them.) Between rebuilds, only other workers' segments are read:
        this process applied its own records when it accepted them.
        """
        live = self.registry.live
        if self._inbox_offsets is None or (live is not None and live.snapshot_id != self._users_of):
            self._rebuild_users(live)
        else:
            self._inbox_offsets = self._read_inbox(self.users, self._inbox_offsets, skip_own=True)

    def _rebuild_users(self, live: SnapshotView | None) -> None:
        snapshot_id, since = self._replay_from(live)
        users = UserStates(self.settings.api_users_max, self.settings.api_user_videos_max)
        offsets = self._read_inbox(users, since if since is not None else consumed_offsets(self.settings.inbox_dir))
        self.users, self._users_of = users, snapshot_id
        # Records this process accepted while the replay ran were applied to the old state only; being durable
        # before they are applied, they are all in the inbox now: read them once more into the new state (one
        # accepted since the swap may be read and applied twice, which the replay keys make a no-op).
        self._inbox_offsets = self._read_inbox(users, offsets)
        if live is not None:
            log.info(
                "user state replayed from the inbox offsets of snapshot %s: %d users", live.snapshot_id, len(users)
            )

    def _read_inbox(self, users: UserStates, since: dict[str, int], *, skip_own: bool = False) -> dict[str, int]:
        """Apply every inbox record after ``since`` to ``users``, reading at most ``api_inbox_read_bytes`` at a
        time (a big inbox replays in flat memory); returns the offsets read up to."""
        offsets = dict(since)
        while True:
            batch = read_new(
                self.settings.inbox_dir,
                offsets,
                max_bytes=self.settings.api_inbox_read_bytes,
                skip=self.inbox.owns if skip_own else None,
            )
            offsets.update(batch.offsets)
            videos: list[dict[str, Any]] = []
            for record in batch.records:
                self._apply(users, record, videos)
            if videos:
                self._take_videos(videos)
            if not batch.more:
                return offsets

    def _take_videos(self, videos: list[dict[str, Any]]) -> None:
        """Posted videos read from the inbox (other workers', or at start-up): searchable here too."""
        with self._videos_lock:
            new = list({v["video_id"]: v for v in videos if self._videos.get(v["video_id"]) != v}.values())
        view = self.registry.live
        self._remember_videos(view, new)
        if view is not None and new:
            with self._videos_lock:
                new = [v for v in new if v["video_id"] in self._videos]  # not already pushed out by the cap
            with view.added.lock:
                stale = [v for v in new if view.added.payload_hash.get(v["video_id"]) != _hash(v)]
            for lo in range(0, len(stale), 256):
                self._encode_into(view, stale[lo : lo + 256])

    def _replay_from(self, live: SnapshotView | None) -> tuple[str | None, dict[str, int] | None]:
        """The snapshot the user state follows and where it replays the inbox from: the offsets that snapshot's
        batch had taken in (the live one, or at start-up the one the LIVE pointer names).

        Not what the batch has consumed by now: a batch that ingested the inbox but has not published yet
        would leave those events in the lake and out of every feed served. None (the consumed offsets) when
        there is no snapshot yet, or it was begun before snapshots recorded their offsets.
        """
        if live is not None:
            offsets = live.build.inbox_offsets
            return live.snapshot_id, dict(offsets) if offsets is not None else None
        snapshot_id = live_snapshot_id(self.settings)
        if snapshot_id is None:
            return None, None
        try:
            offsets = snapshot_paths(self.settings, snapshot_id).read_build().inbox_offsets
        except (OSError, ValueError, TypeError, SnapshotError) as exc:
            log.warning(
                "cannot read the inbox offsets of snapshot %s (%s): replaying what is unconsumed", snapshot_id, exc
            )
            return snapshot_id, None
        return snapshot_id, dict(offsets) if offsets is not None else None

    def _apply(self, users: UserStates, record: InboxRecord, videos: list[dict[str, Any]]) -> None:
        data = record.data
        try:
            # The inbox may hold records an older API accepted, or another writer wrote: one id that breaks the
            # id rule must not reach the user state, live search or a page.
            for key in ("user_id", "video_id", "creator_id"):
                if data.get(key) is not None and (problem := id_problem(data[key])) is not None:
                    log.warning("skipping an inbox %s record: %s %s: %s", record.kind, key, problem, ascii(data)[:200])
                    return
            if record.kind == "event":
                users.apply_event(data, record.at.isoformat())
            elif record.kind == "user" and "watched_videos" in data:
                users.set_profile(
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
