"""The feed as one declared pipeline: candidate source -> filters -> scorers -> selector -> reasons.

:data:`FEED_PIPELINE` is the only place that says which rules a feed obeys and in what order. The batch
materializer (:mod:`rec_core.feed.batch`, exact top-k for 512 users a block) and the live continuation of the API
(:mod:`rec_core.feed.live`, one user's Milvus search) run these same stage objects; only their candidate source
differs. A new stage (a filter, a ranking scorer) is added here and reaches both: the learned ranker
(:mod:`rec_core.feed.rank_stage`) is one, acting where the context carries the snapshot's ranker.

Filters are listed cheapest first and each is a small file in :mod:`rec_core.feed.filters`; a filter returns a
keep-mask over the whole block and the pipeline ANDs them, so a filter's answer never depends on another's. The
batch may also push rules into its search (the exact top-k leaves seen and own videos out up front, for speed);
the filters still run over every block, so what they define holds whatever a source does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext, FeedRows, Filter, Reasoner, Scorer, Selector
from rec_core.feed.filters import Duplicates, OwnVideos, Seen
from rec_core.feed.ordering import ExplainReasons, ModelScore, PolicySelector
from rec_core.feed.rank_stage import RankerScore


@dataclass(frozen=True, slots=True)
class FeedPipeline:
    filters: tuple[Filter, ...]
    scorers: tuple[Scorer, ...]
    selector: Selector
    reasons: Reasoner

    @property
    def stages(self) -> tuple[Filter | Scorer | Selector | Reasoner, ...]:
        return (*self.filters, *self.scorers, self.selector, self.reasons)

    def keep(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        """bool [rows, width]: the candidates every filter lets through."""
        keep = block.video >= 0
        for f in self.filters:
            keep &= f.mask(block, ctx)
        return keep

    def score(self, block: CandidateBlock, ctx: FeedContext) -> CandidateBlock:
        for s in self.scorers:
            block = s.score(block, ctx)
        return block

    def filter_and_score(self, block: CandidateBlock, ctx: FeedContext) -> tuple[CandidateBlock, np.ndarray]:
        """Filters then scorers; a scorer that reorders a row takes the row's keep-mask along."""
        keep = self.keep(block, ctx)
        if not self.scorers:
            return block, keep
        # Carry the mask in the block so a reordering scorer moves it with the candidates: filtered out is -1.
        scored = self.score(replace(block, video=np.where(keep, block.video, -1)), ctx)
        return scored, scored.video >= 0

    def select(self, block: CandidateBlock, keep: np.ndarray, ctx: FeedContext) -> list[np.ndarray]:
        return self.selector.select(block, keep, ctx)

    def run(self, block: CandidateBlock, ctx: FeedContext) -> tuple[CandidateBlock, list[np.ndarray]]:
        """The whole pipeline over one block: the scored block and, per row, positions into it in feed order."""
        scored, keep = self.filter_and_score(block, ctx)
        return scored, self.select(scored, keep, ctx)

    def with_filter(self, extra: Filter) -> FeedPipeline:
        """This pipeline with one more filter, run last."""
        return replace(self, filters=(*self.filters, extra))


FEED_PIPELINE = FeedPipeline(
    filters=(OwnVideos(), Seen(), Duplicates()),
    scorers=(ModelScore(), RankerScore()),
    selector=PolicySelector(),
    reasons=ExplainReasons(),
)


def feed_rows(
    users: np.ndarray, lengths: np.ndarray, videos: np.ndarray, fresh: np.ndarray, ctx: FeedContext
) -> FeedRows:
    """Feeds laid end to end (``lengths[i]`` items of user ``users[i]``; ``fresh`` per item) for the reasons stage."""
    row_user = np.repeat(np.asarray(users, dtype=np.int64), lengths)
    row_rank = np.arange(len(row_user), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    slots = ctx.policy.fresh_slots(ctx.policy.feed_length)
    fresh_slot = slots[row_rank] & fresh if len(row_rank) else np.zeros(0, dtype=bool)
    return FeedRows(row_user, row_rank, videos, fresh_slot)
