"""Never a video twice: only a row's first occurrence of a video stays, and nothing this walk already served."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.membership_kernel import first_in_rows, first_outside_rows


@dataclass(frozen=True, slots=True)
class Duplicates:
    name: str = "duplicates"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        n = ctx.n_videos
        served = ctx.served is not None and len(ctx.served.indices) > 0
        if block.rows == 1:  # the live path, per page: nothing catalogue-sized
            one_part = block.unique_parts is not None and len(block.unique_parts) == 2
            keep = np.ones(block.video.shape, dtype=bool) if one_part else first_in_rows(block.video)
            if served:
                keep &= ~ctx.served.contains(block.users, block.video, n)
            return keep
        # The batch: a compiled pass over the block (rec_core.feed.membership_kernel). Its parts, each free of
        # repeats and in order, make a row's first occurrence the one an earlier part did not take.
        if ctx.served is None:
            return first_in_rows(block.video)
        return first_outside_rows(block.video, block.users, ctx.served.indptr, ctx.served.indices, n)
