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
            keep = np.ones(block.video.shape, dtype=bool) if one_part else _first_in_row(block.video)
            if served:
                keep &= ~ctx.served.contains(block.users, block.video, n)
            return keep
        # The batch: a compiled pass over the block (rec_core.feed.membership_kernel). Its parts, each free of
        # repeats and in order, make a row's first occurrence the one an earlier part did not take.
        if ctx.served is None:
            return first_in_rows(block.video)
        return first_outside_rows(block.video, block.users, ctx.served.indptr, ctx.served.indices, n)


def _first_in_row(video: np.ndarray) -> np.ndarray:
    order = np.argsort(video, axis=1, kind="stable")
    ordered = np.take_along_axis(video, order, axis=1)
    first = np.ones(video.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = np.zeros(video.shape, dtype=bool)
    np.put_along_axis(keep, order, first, axis=1)
    return keep
