"""The shapes the feed pipeline's stages exchange, and the stage interfaces.

A candidate source (batch: exact top-k; live: a Milvus search) hands the pipeline a :class:`CandidateBlock`: one row
of candidates per user, in rank order, as integer codes. The batch passes 512 users a block, the live path one.
A :class:`FeedContext` says what is known about those users (what they watched, which creator they are, what this
walk already served) in the same code space. Every stage speaks only these two types, so one stage object serves
both paths (:mod:`rec_core.feed.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rec_core.feed.candidates import ExclusionCSR
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.reasons import ReasonCatalogue, UserSignals

if TYPE_CHECKING:
    from rec_core.feed.rank_stage import RankInputs


@dataclass(frozen=True, slots=True)
class CandidateBlock:
    """Candidates of ``rows`` users, each row best first; ``video`` is -1 where a row has no candidate."""

    users: np.ndarray  # int64 [rows]: the context row of each block row
    video: np.ndarray  # int64 [rows, width]: video codes
    score: np.ndarray  # float32 [rows, width]: the model's user . video (NaN: not scored yet)
    creator: np.ndarray  # int64 [rows, width]: creator codes (anything where video is -1)
    fresh: np.ndarray  # bool [rows, width]: created within the policy's fresh days before as-of
    # Column bounds [0, ..., width] of parts that each hold a video at most once per row (a top-k list, the trending
    # list), which lets the duplicates filter skip a sort; None when the source promises nothing.
    unique_parts: tuple[int, ...] | None = None

    @property
    def rows(self) -> int:
        return len(self.users)


@dataclass(frozen=True, slots=True)
class FeedContext:
    """What the stages know about the users of a run, in the block's code spaces."""

    policy: FeedPolicy
    video_ids: np.ndarray  # str or object: video id of each catalogue code
    creator_ids: np.ndarray  # str or object [n_creators]: creator id of each creator code
    user_creator: np.ndarray  # int64 [users]: each user's own creator code, -1 when they created nothing here
    seen: ExclusionCSR  # per user: videos watched or skipped (batch: before as-of; live: also since)
    served: ExclusionCSR | None = None  # per user: videos already listed or served in this walk (live only)
    signals: UserSignals | None = None  # batch only: what reasons can cite
    reason_catalogue: ReasonCatalogue | None = None  # batch only
    trending_query: bool = False  # live only: ranked by the trending vector, for a user with nothing
    ranking: RankInputs | None = None  # the ranker stage's inputs; None: no ranker, the towers' order stands
    # Live only: videos posted since the snapshot, coded after the catalogue in this order. Apart, so that a live
    # page does not copy the whole catalogue's ids to append a few.
    posted_ids: tuple[str, ...] = ()
    # Live only: int64 [users, m], the creator codes of the items the walk served just before this page, oldest first
    # (-1: none), so the creator cap holds across the page boundary. None: feeds from the top (the batch).
    prior_creators: np.ndarray | None = None

    @property
    def n_videos(self) -> int:
        return len(self.video_ids) + len(self.posted_ids)

    @property
    def n_creators(self) -> int:
        return len(self.creator_ids)


@dataclass(frozen=True, slots=True)
class FeedRows:
    """Chosen feed items, one per row: (context user, rank, video code, whether a fresh video in a fresh slot)."""

    user: np.ndarray  # int64
    rank: np.ndarray  # int64
    video: np.ndarray  # int64
    fresh_slot: np.ndarray  # bool


class Filter(Protocol):
    """One eligibility rule. ``mask`` is True where a candidate may stay; it must not depend on other filters."""

    name: str

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray: ...


class Scorer(Protocol):
    """Scores (and may reorder) each row's candidates; the returned block keeps the same users."""

    name: str

    def score(self, block: CandidateBlock, ctx: FeedContext) -> CandidateBlock: ...


class Selector(Protocol):
    """Turns each row's eligible candidates into a feed: positions into the row, in feed order."""

    name: str

    def select(self, block: CandidateBlock, keep: np.ndarray, ctx: FeedContext) -> list[np.ndarray]: ...


class Reasoner(Protocol):
    """Why each chosen item is in the feed, as (kind, argument) pairs (:mod:`rec_core.feed.reasons`)."""

    name: str

    def explain(self, rows: FeedRows, ctx: FeedContext) -> tuple[np.ndarray, np.ndarray]: ...
