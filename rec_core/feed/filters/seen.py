"""Never a video the user watched or skipped (the batch knows interactions before as-of; live also events since)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext


@dataclass(frozen=True, slots=True)
class Seen:
    name: str = "seen"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        return ~ctx.seen.contains(block.users, block.video, ctx.n_videos)
