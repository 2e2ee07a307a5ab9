"""How a page is chosen: the precomputed list first, then live search, never a duplicate.

A walk (a first page and the pages its cursors lead to) reads one snapshot:

1. a precomputed list: the user's materialized feed, or for a user the snapshot
   does not know and who has no vector, the trending list (reason "trending");
   a user with a vector but no feed has none;
2. when that list runs out, live search in the snapshot's Milvus collection
   with the user's live vector (:func:`live_vector`), excluding the whole list,
   everything served live in this walk (carried in the cursor), everything the
   user has watched or skipped, and under the same feed policy as the batch
   (creator cap, fresh slots, never one's own videos).

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
from rec_core.feed.policy import FeedPolicy, apply
from rec_core.snapshot.vector_store import MAX_TOPK

LIVE_REASON = "based on what you watch"
TRENDING_REASON = "trending"
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
        codes = ranked.codes[pos:hi].tolist()
        video_ids = ids[codes].tolist()
        scores = ranked.scores[pos:hi].tolist()
        reasons = ranked.reason_codes[pos:hi].tolist()
        creators = view.creator_ids[codes].tolist() if trending else None
        for i, video_id in enumerate(video_ids):
            if len(items) == limit:
                hi = pos + i
                break
            if video_id in seen or (creators is not None and creators[i] == user_id):
                continue
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
        exclude = set(listed) | seen | set(ids[served_codes].tolist()) | set(extra)
        new: list[tuple[str, float]] = []
        need = limit - len(items)
        if need:
            query = vector()
            if query is None:
                query = view.trending_vector
            reason = TRENDING_REASON if query is view.trending_vector else LIVE_REASON
            new = _live(view, query, need, exclude, user_id, policy)
            items += [Item(video_id, score, reason) for video_id, score in new]
            served_codes = np.concatenate(
                [served_codes, np.asarray([view.video_code[v] for v, _ in new if v in view.video_code], dtype=np.int64)]
            )
            extra += [v for v, _ in new if v not in view.video_code]
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


def _live(
    view: SnapshotView, query: np.ndarray, need: int, exclude: set[str], user_id: str, policy: FeedPolicy
) -> list[tuple[str, float]]:
    """Up to ``need`` (video id, score) from live search, best first, under the feed policy.

    The creator cap can leave an over-fetched answer short (a user whose nearest videos are all one creator's):
    then it searches again, four times deeper, until the page fills or the catalogue is exhausted.
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
        hit_ids = [h[0] for h in hits]
        chosen = apply(
            hit_ids,
            [view.creator_of(v) or "" for v in hit_ids],
            [view.created_of(v) for v in hit_ids],
            user_id=user_id,
            seen=(),
            as_of=view.as_of_ms,
            policy=replace(policy, feed_length=min(need, len(hit_ids))),
            scores=[h[1] for h in hits],
        )
        if len(chosen) >= need or len(hits) < k or k >= catalogue:
            return [hits[i] for i in chosen.tolist()]
        k = min(4 * k, catalogue)
    return []
