"""Score, select, explain: the feed stages that order and annotate what the filters kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext, FeedRows
from rec_core.feed.policy import select_block
from rec_core.feed.reasons import Reason, explain


@dataclass(frozen=True, slots=True)
class ModelScore:
    """The two-tower score ``user . video``, which the candidate sources compute with their search: kept as is.

    A ranking model replaces or follows this stage; it may reorder a row, as long as the block keeps its users.
    """

    name: str = "model_score"

    def score(self, block: CandidateBlock, ctx: FeedContext) -> CandidateBlock:
        return block


@dataclass(frozen=True, slots=True)
class PolicySelector:
    """The feed policy (:mod:`rec_core.feed.policy`): creator cap and fresh slots over what the filters kept."""

    name: str = "policy"

    def select(self, block: CandidateBlock, keep: np.ndarray, ctx: FeedContext) -> list[np.ndarray]:
        # select_block reads (and checks) creator codes only where keep is set: no masking copy needed.
        return select_block(block.creator, keep, block.fresh, ctx.n_creators, ctx.policy, ctx.prior_creators)


@dataclass(frozen=True, slots=True)
class ExplainReasons:
    """A reason per item: from the user's signals where the context has them (the batch), else what ranked it."""

    name: str = "reasons"

    def explain(self, rows: FeedRows, ctx: FeedContext) -> tuple[np.ndarray, np.ndarray]:
        if ctx.signals is None or ctx.reason_catalogue is None:
            kind = Reason.TRENDING if ctx.trending_query else Reason.FOR_YOU
            return np.full(len(rows.video), kind, dtype=np.int8), np.zeros(len(rows.video), dtype=np.int64)
        return explain(ctx.reason_catalogue, ctx.signals, rows.user, rows.video, rows.fresh_slot)
