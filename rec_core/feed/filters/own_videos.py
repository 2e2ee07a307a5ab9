"""Never a user's own videos: a candidate whose creator is the user goes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext


@dataclass(frozen=True, slots=True)
class OwnVideos:
    name: str = "own_videos"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        return block.creator != ctx.user_creator[block.users][:, None]
