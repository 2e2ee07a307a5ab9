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
   user has watched or skipped (before the batch: the snapshot's watch history; since:
   the API's events), then the batch's own feed pipeline over the answer
   (:data:`rec_core.feed.pipeline.FEED_PIPELINE` via :func:`rec_core.feed.live.rank_live`:
   the same filters, ranker, creator cap and reasons as the materialized feeds).

``has_more`` is false only when nothing in the catalogue is left to serve, or what is left is all held back by
the creator cap (the feed ends early rather than break it); the reader also ends a walk whose cursor would pass
what a request may carry (:meth:`rec_core.feed.cursor.CursorSigner.encode_if_it_fits`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from feed_api.live_search import LiveSearch
from feed_api.snapshot_view import SnapshotView
from feed_api.user_state import UserActivity
from rec_core.experiments.assign import Placement
from rec_core.feed.cursor import Cursor, encode_codes
from rec_core.feed.live import listed_keep
from rec_core.feed.pipeline import FEED_PIPELINE, FeedPipeline
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.reasons import PLAIN_TEXT, Reason
from rec_core.snapshot.serving_index import RankedList

LIVE_REASON = PLAIN_TEXT[Reason.FOR_YOU]  # what the pipeline's reasons stage says of a live item
TRENDING_REASON = PLAIN_TEXT[Reason.TRENDING]
SHIFT_HALF = 4.0  # positive events since the batch at which they weigh as much as the batch vector


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
    from_list: int = 0  # items[:from_list] came from the precomputed list (the feed, or trending), the rest live


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


def first_cursor(
    view: SnapshotView,
    user_id: str,
    *,
    has_vector: bool,
    placement: Placement | None = None,
    acted_since: bool = False,
) -> Cursor:
    """Where a walk starts: the user's feed, live search for a user with a vector, else trending; bound to the
    user's experiment arm. A MostPop arm's user has a materialized list when the snapshot knows them, and
    trending otherwise: never a search by their vector. A user the snapshot knows without a feed
    (``REC_FEED_ACTIVE_DAYS``) and with no history before it gets trending, as the batch gives such a user, unless
    they posted a profile or watched something since (``acted_since``)."""
    if view.feeds.bounds(user_id) is not None:
        source = "feed"
    elif (
        has_vector
        and not (placement is not None and placement.variant == "most_pop")
        and (acted_since or not (view.knows_user(user_id) and not len(view.watched.codes_of(user_id))))
    ):
        source = "live"
    else:
        source = "trending"
    bound = (placement.experiment, placement.arm, placement.variant) if placement is not None else ()
    return Cursor(view.snapshot_id, user_id, source, 0, placement=bound)


def placement_of(cursor: Cursor) -> Placement | None:
    """The experiment arm a walk is bound to (None: no experiment)."""
    return Placement(*cursor.placement) if len(cursor.placement) == 3 else None


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


def _recent(cursor: Cursor, items: list[Item], span: int) -> tuple[str, ...]:
    """The walk's last ``span`` videos with this page's ``items``, oldest first. Ids, not creators: a precomputed
    page has them at hand, and only a live page needs their creators (looking those up on every page cost a
    precomputed page a third more)."""
    recent = (*cursor.recent_videos, *(i.video_id for i in items[max(len(items) - span, 0) :]))
    return recent[max(len(recent) - span, 0) :]


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
    if cursor.source == "trending":
        # A user the snapshot knows but gave no feed (outside REC_FEED_ACTIVE_DAYS): trending less what they
        # watched before it, as their feed would have been (a newcomer has no history: nothing changes).
        seen = seen | view.watched_before(user_id)
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
        if cursor.source != "trending":  # a trending walk's seen holds it already
            # What they watched before the batch, which their feed left out, and what since.
            seen = seen | view.watched_before(user_id)
        exclude = walked | seen
        new: list[Item] = []
        need = limit - len(items)
        if need:
            query = vector()
            if query is None:
                query = view.trending_vector
            # The ranker's view of the user: a known user's snapshot row plus what they did since, or a fresh
            # user's whole live history.
            profile = None
            if activity is not None:
                profile = activity.since_snapshot() if view.knows_user(user_id) else activity.merged_profile()
            # The creator cap counts the walk's items before the answer: this page's from the list, the pages before.
            prior = tuple(view.catalogue_facts(list(_recent(cursor, items, policy.window - 1)))[1])
            search = LiveSearch(view, user_id, seen, walked, policy, pipeline, query, profile, prior)
            new = [Item(i.video_id, i.score, i.reason) for i in search.items(need, exclude)]
            items += new
            new_codes = view.video_code.codes([i.video_id for i in new])
            served_codes = np.concatenate([served_codes, new_codes[new_codes >= 0]])
            extra += [i.video_id for i, c in zip(new, new_codes.tolist(), strict=True) if c < 0]
        left = view.catalogue_size() - view.known_count(exclude) - len(new)
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
            served=cursor.served + len(items),
            placement=cursor.placement,
            recent_videos=_recent(cursor, items, policy.window - 1),
        )
    return Page(items, has_more, nxt, source, unknown=trending, from_list=from_list)
