"""Never a video twice: only a row's first occurrence of a video stays, and nothing this walk already served."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.candidates import bitmap_keys


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
        if ctx.served is not None:
            taken = ctx.served.bitmap(block.users, n)
        else:
            taken = np.zeros(block.rows * (n + 1), dtype=bool)
        if block.unique_parts is None:
            return _first_in_row(block.video) & ~np.take(taken, bitmap_keys(block.video, n))
        # Parts in order, each free of repeats: a part's video is a duplicate iff an earlier part took it. Flat
        # lookups with a spare "no video" slot: no validity pass (the pipeline drops -1 anyway).
        keep = np.empty(block.video.shape, dtype=bool)
        for i, (a, b) in enumerate(itertools.pairwise(block.unique_parts)):
            keys = bitmap_keys(block.video[:, a:b], n)
            keep[:, a:b] = ~np.take(taken, keys) if i or served else True  # nothing is taken before the first
            taken[keys] = True
        return keep


def _first_in_row(video: np.ndarray) -> np.ndarray:
    order = np.argsort(video, axis=1, kind="stable")
    ordered = np.take_along_axis(video, order, axis=1)
    first = np.ones(video.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = np.zeros(video.shape, dtype=bool)
    np.put_along_axis(keep, order, first, axis=1)
    return keep
