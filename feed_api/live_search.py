"""Live search for a walk past its precomputed list: the user's nearest videos, through the batch's own pipeline.

The snapshot's Milvus collection answers (or, for walks whose exclusions pass Milvus' top-k cap, one exact matrix
product over the vectors in memory); :func:`rec_core.feed.live.rank_live` then runs the feed pipeline over the
answer: the same filters, ranker, creator cap and reasons as the materialized feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from feed_api.snapshot_view import SnapshotView
from rec_core.feed.live import LiveItem, rank_live
from rec_core.feed.pipeline import FeedPipeline
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.rank_stage import RankInputs
from rec_core.model.inference import UserProfile
from rec_core.snapshot.vector_store import MAX_TOPK

OVERFETCH = 4  # live candidates fetched per item needed, so the creator cap still fills a page


def exact_search(view: SnapshotView, query: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    """The ``k`` best unexcluded videos by inner product, from the vectors in memory.

    For walks so deep that their exclusions pass Milvus' top-k cap (16,384), where
    an over-fetching search could come back empty while videos remain: one matrix
    product over the catalogue (about a millisecond for 50,000 x 64) is exact.
    """
    with view.added.lock:
        added = list(view.added.vectors.items())
    n = len(view.video_ids)
    vectors = view.video_vectors if not added else np.vstack([view.video_vectors, np.stack([v for _, v in added])])
    scores = vectors @ query.astype(np.float32)
    if exclude:
        # By code, one binary search per excluded id: the exclusions hold the user's whole history, and isin
        # compared strings over the whole catalogue.
        codes = view.video_code.codes(list(exclude))
        scores[codes[codes >= 0]] = -np.inf
        for i, (video_id, _) in enumerate(added):
            if video_id in exclude:
                scores[n + i] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [
        (str(view.video_ids[i]) if i < n else added[i - n][0], float(scores[i])) for i in top if np.isfinite(scores[i])
    ]


@dataclass(frozen=True, slots=True)
class LiveSearch:
    """One live answer of a walk: whom it is for, and what the pipeline's context needs besides the search."""

    view: SnapshotView
    user_id: str
    seen: set[str]
    walked: set[str]  # listed or served in this walk
    policy: FeedPolicy
    pipeline: FeedPipeline
    query: np.ndarray  # the vector the search ran with: the user's (the ranker reads it), or the trending vector
    profile: UserProfile | None = None  # for the ranker: a fresh user's live history, a known one's events since
    prior_creators: tuple[str, ...] = ()  # creators of the walk's items just before the answer, oldest first

    @property
    def depth(self) -> int:
        """How many hits the ranker reorders: its N, as the batch reorders each user's top N (0 without one)."""
        ranking = self.view.ranking
        if ranking is None or self.query is self.view.trending_vector:
            return 0
        return ranking.model.ranker.n_candidates

    def rank(self, hits: list[tuple[str, float]], need: int) -> list[LiveItem]:
        view = self.view
        trending = self.query is view.trending_vector  # not a user's answer: nothing for the ranker to read
        ranking = None if trending else view.ranking_for(self.user_id, self.query, self.profile)
        popular = self.popular(ranking)
        codes, creators, created = view.catalogue_facts([v for v, _ in hits + popular])
        return rank_live(
            self.pipeline,
            hits + popular,
            creators,
            created,
            user_id=self.user_id,
            seen=self.seen,
            served=self.walked,
            codes=codes,
            video_ids=view.video_ids,
            as_of_ms=view.as_of_ms,
            policy=replace(self.policy, feed_length=min(need, len(hits))),
            trending_query=trending,
            ranking=ranking,
            posted_vector=view.video_vector,
            popular=len(popular),
            prior_creators=self.prior_creators,
        )

    def popular(self, ranking: RankInputs | None) -> list[tuple[str, float]]:
        """The ranker's popular videos scored with the query, its second source (the filters drop the seen ones)."""
        if ranking is None or not len(codes := ranking.catalogue.popular_codes):
            return []
        scores = self.view.video_vectors[codes] @ self.query.astype(np.float32)
        ids = self.view.video_ids[codes]
        return [(str(v), float(x)) for v, x in zip(ids, scores, strict=True)]

    def items(self, need: int, exclude: set[str]) -> list[LiveItem]:
        """Up to ``need`` items from live search, best first, through the feed pipeline.

        The creator cap (or any filter) can leave an over-fetched answer short (a user whose nearest videos are all one
        creator's): then it searches again, four times deeper, until the page fills or the catalogue is exhausted.
        With the ranker, the first search is at least its N deep, so a live page is chosen from the same candidates a
        batch feed would be: the towers' top N, reordered.
        """
        catalogue = self.view.catalogue_size()
        k = min(max(need * OVERFETCH + 16, self.depth), catalogue)
        while k >= 1:
            if k + len(exclude) <= MAX_TOPK:
                hits = self.view.store.search(self.query, k, exclude_ids=sorted(exclude))[0]
            else:
                hits = exact_search(self.view, self.query, k, exclude)
            if not hits:
                return []
            chosen = self.rank(hits, need)
            if len(chosen) >= need or len(hits) < k or k >= catalogue:
                return chosen
            k = min(4 * k, catalogue)
        return []
