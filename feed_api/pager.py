"""How a page is chosen: the precomputed list first, then live search, never a duplicate.

A walk (a first page and the pages its cursors lead to) reads one snapshot:

1. a precomputed list: the user's materialized feed, or for a user the snapshot
   does not know and who has no vector, the trending list (reason "trending");
   a user with a vector but no feed has none; paged through the feed pipeline's
   filters (:func:`rec_core.feed.live.listed_keep`), so what the user watched since
   the batch, and their own videos in trending, are skipped;
2. when that list runs out, live search in the snapshot's Milvus collection
   with the user's live vector (:func:`live_vector`), excluding the whole list,
   everything served live in this walk (carried in the cursor) and everything the
   user has watched or skipped, then the batch's own feed pipeline over the answer
   (:data:`rec_core.feed.pipeline.FEED_PIPELINE` via :func:`rec_core.feed.live.rank_live`:
   the same filters, creator cap and reasons as the materialized feeds).

``has_more`` is false only when nothing in the catalogue is left to serve.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgspec
import numpy as np

from feed_api.snapshot_view import RankedList, SnapshotView
from feed_api.user_state import UserActivity
from rec_core.feed.cursor import Cursor, encode_codes
from rec_core.feed.live import listed_keep, rank_live
from rec_core.feed.pipeline import FEED_PIPELINE, FeedPipeline
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.reasons import PLAIN_TEXT, Reason
from rec_core.snapshot.vector_store import MAX_TOPK

LIVE_REASON = PLAIN_TEXT[Reason.FOR_YOU]  # what the pipeline's reasons stage says of a live item
TRENDING_REASON = PLAIN_TEXT[Reason.TRENDING]
SHIFT_HALF = 4.0  # positive events since the batch at which they weigh as much as the batch vector
OVERFETCH = 4  # live candidates fetched per item needed, so the creator cap still fills a page


class Item(msgspec.Struct, frozen=True):
    """One feed item, also the API's item shape (a Struct: 20 of them per page are built in microseconds)."""

    video_id: str
    score: float
    reason: str


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    has_more: bool
    cursor: Cursor | None  # where the next page starts; None when has_more is false
    source: str  # precomputed | live | mixed | trending
    unknown: bool  # the user has no feed and no vector (served trending)


class LiveVectors:
    """Per (snapshot, user) cache of live vectors, invalidated by the user's activity version."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[int, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def get(self, view: SnapshotView, user_id: str, activity: UserActivity | None) -> np.ndarray | None:
        version = activity.version if activity else -1
        key = (view.snapshot_id, user_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(key)
                return hit[1]
        vector = live_vector(view, user_id, activity)
        with self._lock:
            self._cache[key] = (version, vector)
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return vector


def live_vector(view: SnapshotView, user_id: str, activity: UserActivity | None) -> np.ndarray | None:
    """The user's vector now, in ``view``'s space; None for a user we know nothing about.

    The base is the user tower online for a user who posted a profile or who has
    only events (their history as the API knows it), else the batch vector. Then
    whatever they liked or watched through since the batch pulls it: one positive
    event moves it a fifth of the way, four move it half way. The tower pools a
    long history by averaging, in which a fresh like barely counts; a feed that
    answers to the last few minutes needs more weight on them than that.
    """
    batch = view.batch_vector(user_id)
    if activity is not None and (activity.profile is not None or (batch is None and activity.watches)):
        base = view.profile_vector(activity.merged_profile()).vector
    elif batch is not None:
        base = batch
    else:
        return None
    if activity is None or not activity.positive:
        return base
    pulled = [(view.video_vector(v), w) for v, w in activity.positive.items()]
    pulled = [(vec, w) for vec, w in pulled if vec is not None]
    if not pulled:
        return base
    weights = np.array([w for _, w in pulled], dtype=np.float32)
    target = (np.stack([vec for vec, _ in pulled]) * weights[:, None]).sum(axis=0) / weights.sum()
    share = len(pulled) / (len(pulled) + SHIFT_HALF)
    moved = (1.0 - share) * base + share * target
    return (moved / max(float(np.linalg.norm(moved)), 1e-12)).astype(np.float32)


def first_cursor(view: SnapshotView, user_id: str, *, has_vector: bool) -> Cursor:
    """Where a walk starts: the user's feed, live search for a user with a vector, else trending."""
    if view.feeds.bounds(user_id) is not None:
        source = "feed"
    elif has_vector:
        source = "live"
    else:
        source = "trending"
    return Cursor(view.snapshot_id, user_id, source, 0)


def precomputed(view: SnapshotView, cursor: Cursor) -> tuple[RankedList, int, int]:
    """The walk's precomputed list and its [start, end) in it."""
    if cursor.source == "feed":
        bounds = view.feeds.bounds(cursor.user_id)
        if bounds is None:  # cannot happen for a cursor we signed on this snapshot
            return view.feeds.items, 0, 0
        return view.feeds.items, bounds[0], bounds[1]
    if cursor.source == "trending":
        return view.trending, 0, len(view.trending)
    return view.trending, 0, 0


def next_page(
    view: SnapshotView,
    cursor: Cursor,
    limit: int,
    activity: UserActivity | None,
    vector: Callable[[], np.ndarray | None],
    policy: FeedPolicy,
    pipeline: FeedPipeline = FEED_PIPELINE,
) -> Page:
    seen = activity.seen if activity else set()
    user_id = cursor.user_id
    ranked, start, end = precomputed(view, cursor)
    items: list[Item] = []
    pos = start + cursor.position
    ids = view.video_ids
    trending = cursor.source == "trending"
    while len(items) < limit and pos < end:
        # Slices as Python lists: indexing numpy scalar by scalar costs more than the rest of a page.
        hi = min(end, pos + limit - len(items) + len(seen))
        codes = ranked.codes[pos:hi]
        # A user's own feed passed the pipeline's filters in the batch: only events since can make them drop more.
        keep = None
        if seen or trending:
            keep = listed_keep(
                pipeline,
                codes,
                ranked.scores[pos:hi],
                view.creator_ids[codes],
                view.created_ms[codes],
                user_id=user_id,
                seen=seen,
                video_code=view.video_code,
                video_ids=ids,
                as_of_ms=view.as_of_ms,
                policy=policy,
            ).tolist()
        video_ids = ids[codes].tolist()
        scores = ranked.scores[pos:hi].tolist()
        reasons = ranked.reason_codes[pos:hi].tolist()
        for i, video_id in enumerate(video_ids):
            if len(items) == limit:
                hi = pos + i
                break
            if keep is None or keep[i]:
                reason = TRENDING_REASON if trending else ranked.reasons[reasons[i]]
                items.append(Item(video_id, scores[i], reason))
        pos = hi
    from_list = len(items)
    served_codes = cursor.served_codes()
    extra = list(cursor.live_extra)
    list_left = pos < end
    has_more = list_left
    if not list_left:
        listed = ids[ranked.codes[start:end]].tolist()
        walked = set(listed) | set(ids[served_codes].tolist()) | set(extra)
        exclude = walked | seen
        new: list[Item] = []
        need = limit - len(items)
        if need:
            query = vector()
            if query is None:
                query = view.trending_vector
            live = _Live(view, user_id, seen, walked, policy, pipeline, query is view.trending_vector)
            new = _live(view, query, need, exclude, live)
            items += new
            known = [view.video_code[i.video_id] for i in new if i.video_id in view.video_code]
            served_codes = np.concatenate([served_codes, np.asarray(known, dtype=np.int64)])
            extra += [i.video_id for i in new if i.video_id not in view.video_code]
        left = view.catalogue_size() - sum(1 for v in exclude if view.known_video(v)) - len(new)
        # An empty live answer means what is left is all blocked (the user's own videos): the walk ends.
        has_more = left > 0 and (need == 0 or bool(new))
    source = "trending" if trending and from_list else ("precomputed" if from_list == len(items) else "live")
    if 0 < from_list < len(items):
        source = "mixed"
    nxt = None
    if has_more:
        nxt = Cursor(
            cursor.snapshot_id,
            user_id,
            cursor.source,
            pos - start,
            encode_codes(served_codes) if len(served_codes) else b"",
            tuple(extra),
            cursor.page + 1,
        )
    return Page(items, has_more, nxt, source, unknown=trending)


def exact_search(view: SnapshotView, query: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    """The ``k`` best unexcluded videos by inner product, from the vectors in memory.

    For walks so deep that their exclusions pass Milvus' top-k cap (16,384), where
    an over-fetching search could come back empty while videos remain: one matrix
    product over the catalogue (about a millisecond for 50,000 x 64) is exact.
    """
    with view.added.lock:
        added = list(view.added.vectors.items())
    ids = np.concatenate([view.video_ids, np.asarray([a for a, _ in added], dtype=object)])
    vectors = view.video_vectors if not added else np.vstack([view.video_vectors, np.stack([v for _, v in added])])
    scores = vectors @ query.astype(np.float32)
    if exclude:
        scores[np.isin(ids, np.asarray(list(exclude), dtype=object))] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [(str(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]


@dataclass(frozen=True, slots=True)
class _Live:
    """Who a live answer is for: what the pipeline's context needs besides the search."""

    view: SnapshotView
    user_id: str
    seen: set[str]
    walked: set[str]  # listed or served in this walk
    policy: FeedPolicy
    pipeline: FeedPipeline
    trending_query: bool

    def rank(self, hits: list[tuple[str, float]], need: int) -> list[Item]:
        view = self.view
        chosen = rank_live(
            self.pipeline,
            hits,
            [view.creator_of(v) or "" for v, _ in hits],
            [view.created_of(v) for v, _ in hits],
            user_id=self.user_id,
            seen=self.seen,
            served=self.walked,
            video_code=view.video_code,
            video_ids=view.video_ids,
            as_of_ms=view.as_of_ms,
            policy=replace(self.policy, feed_length=min(need, len(hits))),
            trending_query=self.trending_query,
        )
        return [Item(c.video_id, c.score, c.reason) for c in chosen]


def _live(view: SnapshotView, query: np.ndarray, need: int, exclude: set[str], live: _Live) -> list[Item]:
    """Up to ``need`` items from live search, best first, through the feed pipeline.

    The creator cap (or any filter) can leave an over-fetched answer short (a user whose nearest videos are all one
    creator's): then it searches again, four times deeper, until the page fills or the catalogue is exhausted.
    """
    catalogue = view.catalogue_size()
    k = min(need * OVERFETCH + 16, catalogue)
    while k >= 1:
        if k + len(exclude) <= MAX_TOPK:
            hits = view.store.search(query, k, exclude_ids=sorted(exclude))[0]
        else:
            hits = exact_search(view, query, k, exclude)
        if not hits:
            return []
        chosen = live.rank(hits, need)
        if len(chosen) >= need or len(hits) < k or k >= catalogue:
            return chosen
        k = min(4 * k, catalogue)
    return []
