"""The read path: a page of a user's feed (``POST /recommendations``), from the snapshot its walk reads.

A first page starts on the live snapshot; a cursor's page continues on the
snapshot the cursor names (loaded again if it is retained but not in memory,
410 when it is gone). Which items a page holds is :mod:`feed_api.pager`'s
rule. Each page gets a fresh ``request_id`` and is handed to the impression log
(:mod:`feed_api.impression_log`), which writes it off the request path. Nothing
else here writes: what users did since the batch comes in through ``activity``
(kept by :class:`feed_api.live_updates.LiveUpdates`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable

import numpy as np

from feed_api.bodies import RecommendationsIn, RecommendationsOut
from feed_api.errors import ApiError
from feed_api.impression_log import ImpressionLog, PageShown
from feed_api.live_snapshot import live_view
from feed_api.pager import LiveVectors, Page, first_cursor, next_page, placement_of, precomputed
from feed_api.snapshot_view import SnapshotView
from feed_api.snapshots import SnapshotRegistry
from feed_api.telemetry import Metrics
from feed_api.user_state import UserActivity
from rec_core.feed.cursor import Cursor, CursorError, CursorSigner, cursor_secret
from rec_core.feed.policy import FeedPolicy
from rec_core.settings import ApiSettings, BatchSettings, PathSettings

RESTART_HINT = "restart from the first page: send the request again with cursor null"


def acted_since(activity: UserActivity | None) -> bool:
    """Whether the user posted a profile or watched something since the batch: what the user tower reads."""
    return activity is not None and (activity.profile is not None or activity.watches > 0)


def has_live_vector(view: SnapshotView, user_id: str, activity: UserActivity | None) -> bool:
    """Whether :func:`feed_api.pager.live_vector` has a vector for the user, without computing it: a batch
    vector, a posted profile or events since the batch (the user tower reads those)."""
    return view.knows_user(user_id) or acted_since(activity)


def precomputed_suffices(view: SnapshotView, cursor: Cursor, limit: int, activity: UserActivity | None) -> bool:
    """Whether the page comes whole from the walk's precomputed list, even if every video the user has seen
    since the batch is in it: then no live search or user tower is needed."""
    _, start, end = precomputed(view, cursor)
    skipped = len(activity.seen) if activity else 0
    if cursor.source == "trending":  # a known user's history leaves trending too (pager.next_page)
        skipped += len(view.watched.codes_of(cursor.user_id))
    return end - start - cursor.position > limit + skipped


class FeedReader:
    def __init__(
        self,
        paths: PathSettings,
        batch: BatchSettings,
        api: ApiSettings,
        registry: SnapshotRegistry,
        metrics: Metrics,
        activity: Callable[[str], UserActivity | None],
        impressions: ImpressionLog | None = None,
    ) -> None:
        self._paths = paths
        self.api = api
        self.registry = registry
        self.signer = CursorSigner(cursor_secret(api.cursor_secret, paths.data_dir), api.cursor_ttl_s)
        self.vectors = LiveVectors()
        self.policy = FeedPolicy(feed_length=batch.feed_length)
        self._metrics = metrics
        self._activity = activity
        self.impressions = impressions
        # Request ids: 64 random bits per process, then a counter (32 hex digits in all). Unique across workers
        # and restarts, and without a urandom call per page.
        self._request_prefix = secrets.token_hex(8)
        self._request_seq = itertools.count()

    def live_view(self) -> SnapshotView:
        return live_view(self.registry, self._paths)

    async def recommend(self, req: RecommendationsIn) -> RecommendationsOut:
        user_id = req.user_id
        activity = self._activity(user_id)
        if req.cursor is None:
            view = self.live_view()
            placement = view.assignment.of(user_id) if view.assignment else None
            has_vector = has_live_vector(view, user_id, activity)
            acted = acted_since(activity)
            cursor = first_cursor(view, user_id, has_vector=has_vector, placement=placement, acted_since=acted)
        else:
            cursor = self._decode(req.cursor, user_id)
            view = await self._view_of(cursor)
            placement = placement_of(cursor)
        # An arm that names another model version reads that version's space of the snapshot.
        view = view.in_space(placement)
        # A MostPop arm's walk goes on, past its list, by the trending direction, never the user's own vector.
        most_pop = placement is not None and placement.variant == "most_pop"

        def vector() -> np.ndarray | None:
            return None if most_pop else self.vectors.get(view, user_id, activity)

        def page() -> Page:
            return next_page(view, cursor, req.limit, activity, vector, self.policy)

        # The precomputed part is a few array slices: answer it on the event loop. Live search and the
        # user tower block for milliseconds: give them a thread.
        if precomputed_suffices(view, cursor, req.limit, activity):
            result = page()
        else:
            result = await asyncio.to_thread(page)
        self._metrics.page(result.source)
        request_id = f"{self._request_prefix}{next(self._request_seq):016x}"
        if self.impressions is not None and result.items:
            self.impressions.record(
                PageShown(
                    request_id=request_id,
                    user_id=user_id,
                    snapshot_id=view.snapshot_id,
                    model_version=view.model_version,
                    experiment=placement.experiment if placement else None,
                    arm=placement.arm if placement else None,
                    ts_ms=time.time_ns() // 1_000_000,
                    first_position=cursor.served,
                    items=result.items,
                    from_list=result.from_list,
                    list_source="trending" if cursor.source == "trending" else "precomputed",
                )
            )
        token = self.signer.encode_if_it_fits(result.cursor) if result.cursor is not None else None
        return RecommendationsOut(
            items=result.items,
            has_more=token is not None,
            next_cursor=token,
            snapshot_id=view.snapshot_id,
            source=result.source,
            request_id=request_id,
        )

    def _decode(self, token: str, user_id: str) -> Cursor:
        try:
            return self.signer.decode(token, user_id=user_id)
        except CursorError as exc:
            if exc.kind == "expired":
                raise ApiError(410, "cursor_expired", "cursor", str(exc), RESTART_HINT) from None
            code = {"wrong_user": "cursor_wrong_user", "tampered": "cursor_tampered"}.get(exc.kind, "cursor_invalid")
            raise ApiError(400, code, "cursor", str(exc), "start again with cursor null") from None

    async def _view_of(self, cursor: Cursor) -> SnapshotView:
        """The snapshot the walk reads; loading a retained one takes seconds, so off the event loop."""
        view = self.registry.loaded(cursor.snapshot_id) or await asyncio.to_thread(
            self.registry.get, cursor.snapshot_id
        )
        if view is None:
            reason = f"snapshot {cursor.snapshot_id} of this walk is no longer kept"
            raise ApiError(410, "cursor_expired", "cursor", reason, RESTART_HINT)
        return view
