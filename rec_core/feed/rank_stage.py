"""The ranker as a feed-pipeline scorer: each row's towers' candidates reordered by the learned ranker.

:class:`RankerScore` sits after :class:`~rec_core.feed.ordering.ModelScore` in the declared pipeline, so the batch
materializer (512 users a block) and the API's live continuation (one user) run this one stage object. It reads
what the context carries in :attr:`~rec_core.feed.block.FeedContext.ranking` (:class:`RankInputs`): the snapshot's
ranker and feature state (:mod:`rec_core.snapshot.rank_state`), the towers' engagement head, and where the run's
users and videos sit in that state. Without it (``REC_RANKER=off``, a model without a ranker, the trending list)
the stage hands the block back untouched, so the feeds are exactly the towers' order.

What it reorders: the leading ``ranker.n_candidates + ranker.n_popular`` columns of the block's first part (the
towers' own top N, then the popular videos the ranker was trained to weigh against them, as the sources lay them
out with :func:`~rec_core.rank.candidates.with_popular`; the batch's fresh and trending parts behind it keep their
order), and of those only the cells the towers scored and the filters kept. Features are
:func:`~rec_core.rank.features.block_features` over the block's rows, the order
:func:`~rec_core.rank.scoring.rank_order`'s; video, score, creator and freshness move together, so a row stays a
permutation of itself and its parts keep their promise of uniqueness. ``score`` stays the towers' ``user . video``
(what the feed files carry); the order is the ranker's, as the snapshot's build.json records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.engagement import EngagementHead
from rec_core.model.inference import UserProfile
from rec_core.model.store import LoadedModel
from rec_core.rank.candidates import popular_items
from rec_core.rank.features import block_features
from rec_core.rank.ranker import Ranker
from rec_core.rank.scoring import rank_order
from rec_core.rank.state import AsOfState
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import BuildInfo, SnapshotPaths
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.rank_state import RankState, read_ranking


@dataclass(frozen=True, slots=True)
class RankModel:
    """A snapshot's ranking stage, loaded once: the ranker, its feature state, the towers' engagement head."""

    ranker: Ranker
    state: RankState
    engagement: EngagementHead | None  # the towers' engagement head; None: the engagement features read NaN
    # State rows of the popular videos the ranker ranks behind the towers' list, as of the snapshot's as-of.
    popular_rows: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ranker = self.ranker
        rows = popular_items(self.state.state, ranker.n_popular, ranker.popular_source)
        object.__setattr__(self, "popular_rows", rows)

    def over(self, video_ids: np.ndarray | Sequence[str], video_vectors: np.ndarray) -> RankCatalogue:
        """This ranker over a code space of videos (the batch's catalogue, the API's snapshot codes)."""
        return RankCatalogue(self, self.state.video_rows(video_ids), video_vectors)


@dataclass(frozen=True, slots=True)
class RankCatalogue:
    model: RankModel
    item_rows: np.ndarray  # int64 per video code: its row in the state
    video_vectors: np.ndarray  # float32 per video code
    popular_codes: np.ndarray = field(init=False)  # int64: the model's popular videos in this code space, in order

    def __post_init__(self) -> None:
        object.__setattr__(self, "popular_codes", _codes_of(self.item_rows, self.model.popular_rows))

    def inputs(
        self,
        user_ids: np.ndarray | Sequence[str],
        user_vectors: np.ndarray,
        extra_vectors: np.ndarray | None = None,
    ) -> RankInputs:
        """The context of a run over ``user_ids`` (context rows), each retrieved with its row of ``user_vectors``."""
        rows = self.model.state.user_rows(user_ids)
        return RankInputs(self, rows, np.asarray(user_vectors, dtype=np.float32), extra_vectors)

    def live_inputs(
        self, user_id: str, user_vector: np.ndarray, profile: UserProfile | None, *, in_snapshot: bool
    ) -> RankInputs:
        """The context of one live user whose ``profile`` has watches: their own state row (row 0 of a state of
        their own, :mod:`rec_core.rank.profile_state`). ``in_snapshot`` says which history ``profile`` is, by the
        caller's rule for a user the snapshot knows: the events since the snapshot, added to their snapshot row;
        else their whole history, on no row (a state row of theirs would count it twice)."""
        inputs = self.inputs([user_id], user_vector[None, :])
        state = self.model.state
        if profile is None or not profile.watched:
            return inputs
        row = int(inputs.user_rows[0])
        base = row if in_snapshot and row != state.neutral_user else None
        return replace(inputs, user_rows=np.zeros(1, dtype=np.int64), state=state.profile_state(profile, base))


@dataclass(frozen=True, slots=True)
class RankInputs:
    """What :class:`RankerScore` needs of a run (``FeedContext.ranking``)."""

    catalogue: RankCatalogue
    user_rows: np.ndarray  # int64 per context user: its state row (the neutral row for a user the build lacks)
    user_vectors: np.ndarray  # float32 per context user: the vector its candidates were retrieved with
    extra_vectors: np.ndarray | None = None  # videos posted since the snapshot: codes past the catalogue's, in order
    state: AsOfState | None = None  # the state the user rows index: the snapshot's, unless one user's own (live)

    @property
    def ranker(self) -> Ranker:
        return self.catalogue.model.ranker

    def items(self, video: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """State rows of ``video`` codes (-1 where not ``valid``); a code past the catalogue: the neutral video."""
        rows = self.catalogue.item_rows
        neutral = self.catalogue.model.state.neutral_video
        known = np.where(video < len(rows), rows[np.clip(video, 0, len(rows) - 1)], neutral) if len(rows) else neutral
        return np.where(valid, known, -1)

    def vectors(self, codes: np.ndarray) -> np.ndarray:
        """float32 vectors of video ``codes`` (any shape), those posted since the snapshot included."""
        known = self.catalogue.video_vectors
        posted = codes >= len(known)
        if self.extra_vectors is None or not posted.any():
            return known[codes]
        out = known[np.minimum(codes, len(known) - 1)]  # gathers only the cells asked for, never the catalogue
        out[posted] = self.extra_vectors[codes[posted] - len(known)]
        return out

    def engagement(self, users: np.ndarray, video: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
        """float32 (rows, width, 3): the towers' engagement head on each valid (row's user, video); NaN elsewhere."""
        head = self.catalogue.model.engagement
        if head is None:
            return None
        return head.over_lists(self.user_vectors[users], video, valid, self.vectors)


@dataclass(frozen=True, slots=True)
class RankerScore:
    """The ranker's order over each row's leading towers' candidates; a pass-through without a ranker."""

    name: str = "ranker"

    def score(self, block: CandidateBlock, ctx: FeedContext) -> CandidateBlock:
        inputs = ctx.ranking
        if inputs is None or block.rows == 0:
            return block
        ranker = inputs.ranker
        n = ranked_width(block, ranker.n_candidates + ranker.n_popular)
        video, tower = block.video[:, :n], block.score[:, :n]
        # Only what the towers scored is theirs to rerank: a list (trending) carries NaN and keeps its order.
        valid = (video >= 0) & np.isfinite(tower)
        if not valid.any():
            return block
        users = np.asarray(block.users, dtype=np.int64)
        features, valid = block_features(
            inputs.state or inputs.catalogue.model.state.state,
            inputs.user_rows[users],
            inputs.items(video, valid),
            tower,
            inputs.engagement(users, video, valid),
            towers_width=ranker.n_candidates,
        )
        order = rank_order(inputs.ranker, features, valid)
        return replace(
            block,
            video=_permuted(block.video, order),
            score=_permuted(block.score, order),
            creator=_permuted(block.creator, order),
            fresh=_permuted(block.fresh, order),
        )


def ranked_width(block: CandidateBlock, n_candidates: int) -> int:
    """How many leading columns the ranker reorders: its N (and its popular videos behind them), within the block's
    first part."""
    parts = block.unique_parts
    first = parts[1] if parts is not None and len(parts) > 1 else block.video.shape[1]
    return max(0, min(n_candidates, first))


def _codes_of(item_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The codes whose state row is each of ``rows``, in order; rows no code maps to are left out."""
    if not len(rows) or not len(item_rows):
        return np.zeros(0, dtype=np.int64)
    by_row = np.argsort(item_rows, kind="stable")
    at = np.minimum(np.searchsorted(item_rows[by_row], rows), len(by_row) - 1)
    found = item_rows[by_row[at]] == rows
    return by_row[at[found]].astype(np.int64)


def _permuted(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    n = order.shape[1]
    out = np.array(values)  # a copy: sources hand in read-only broadcasts
    out[:, :n] = np.take_along_axis(values[:, :n], order, axis=1)
    return out


def load_rank_model(
    path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo, model: LoadedModel | None = None
) -> RankModel | None:
    """The snapshot's ranking stage when its build applied one (None otherwise), from the snapshot's files alone;
    ``model`` is the build's model if the caller has it loaded already (its engagement head is used)."""
    if not build.ranker_applied:
        return None
    ranker, state = read_ranking(paths.rank_dir)
    loaded = model or load_snapshot_model(path_settings, paths, build)
    return RankModel(ranker, state, EngagementHead.of(loaded.model.engagement))
