"""Retrieval + ranking as one full-catalogue score function, and the per-block reordering a feed stage needs.

:class:`RankedRetrieval` is a ``ScoreFn`` for :mod:`rec_core.eval.ranking_metrics`: for a batch of users it returns a
score for every video of the catalogue, so retrieval + ranking is evaluated exactly like every other model. The
towers' top N unseen videos posted before t come first, in the ranker's order; every other video follows in the
towers' order, those not posted yet at t last (:func:`~rec_core.rank.retrieval.as_of_scores`); videos the user
watched before t score ``-inf``. With ``ranker=None`` it is the same retrieval without the ranker (the very lists
the ranker would reorder, in the towers' order): the fair "before" of the comparison.

:func:`rank_order` is the reordering alone, over a block of candidate lists (rows of users, columns best first by
the towers, -1 for none): the shape of the feed pipeline's ``CandidateBlock``, so a ``Scorer`` stage can wrap it
for the batch's 512-user blocks or the live path's one user: features by
:func:`~rec_core.rank.features.block_features` from the block's users, videos and tower scores, then the block's
columns permuted row by row with this order.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from rec_core.rank.candidates import DEFAULT_CANDIDATES, RankBlock, candidate_block, popular_items
from rec_core.rank.ranker import Ranker
from rec_core.rank.retrieval import PostedVideos, TowerView, as_of_scores
from rec_core.rank.state import AsOfState

# Ranked candidates score above this (tower scores are cosines, at most 1), so they always precede the rest.
CANDIDATE_FLOOR = 2.0


def rank_order(ranker: Ranker, features: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int64 (rows, width): each row's column positions in the ranker's order, invalid cells last.

    ``features`` are :func:`~rec_core.rank.features.block_features`'s rows for the valid cells. Equal predictions
    keep the towers' order (a stable sort over columns that are already best first).
    """
    rows, width = valid.shape
    score = np.full((rows, width), -np.inf)
    score[valid] = ranker.predict(features)
    return np.argsort(-score, axis=1, kind="stable")


@dataclass(slots=True)
class CandidateBlocks:
    """:func:`~rec_core.rank.candidates.candidate_block` of one batch of users at a time, kept until the next batch:
    the stacks evaluated together over the same towers, instant and candidates (retrieval alone, and with the
    ranker, in :func:`~rec_core.eval.ranking_metrics.user_metrics_many`) then retrieve once per batch."""

    view: TowerView
    state: AsOfState
    n: int
    popular: np.ndarray | None
    posted: PostedVideos
    _users: np.ndarray | None = None
    _block: RankBlock | None = None

    def of(self, users: np.ndarray) -> tuple[RankBlock, bool]:
        """The batch's block, and whether it was built by this call (its seconds are then to be counted)."""
        if self._block is not None and self._users is not None and np.array_equal(self._users, users):
            return self._block, False
        block = candidate_block(self.view, self.state, users, self.n, self.popular, self.posted)
        self._users, self._block = users.copy(), block
        return self._block, True


@dataclass(slots=True)
class RankedRetrieval:
    """The towers' candidates reordered by ``ranker`` (or not, with None), as of ``state.t_ms``, as a ScoreFn; also a
    :class:`~rec_core.eval.ranking_metrics.TopScorer`, its top k being its candidate list's first k.

    With ``blocks``, its candidate lists come from there (shared with another stack; their ``n`` and popular videos
    must be this ranker's: :func:`evaluated_stacks` builds them so)."""

    view: TowerView
    state: AsOfState
    ranker: Ranker | None
    n: int = DEFAULT_CANDIDATES
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    users_scored: int = 0
    _popular: np.ndarray | None = None
    _posted: PostedVideos | None = None
    blocks: CandidateBlocks | None = None

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        """Every video's score: the ranked candidates first, in the ranker's order, then the towers' ranking of
        the rest (an evaluation asks for them only where :meth:`top` cannot answer)."""
        users = np.asarray(users, dtype=np.int64)
        self.users_scored += len(users)
        if self.ranker is None:
            return self._retrieval_scores(users)
        block, ranked_items = self._ranked(users)
        scores = self._retrieval_scores(users)
        width = block.items.shape[1]
        value = CANDIDATE_FLOOR + (width - np.arange(width, dtype=np.float32)) / width
        r, c = np.nonzero(ranked_items >= 0)
        scores[torch.from_numpy(r), torch.from_numpy(ranked_items[r, c])] = torch.from_numpy(value[c])
        return scores

    def top(self, users: np.ndarray, k: int) -> np.ndarray | None:
        """Each user's first ``k`` videos as :meth:`__call__` ranks them (int64, rows x k), read off the candidate
        list; None when a row lists fewer than ``k`` (its ranking goes on into the rest of the catalogue)."""
        users = np.asarray(users, dtype=np.int64)
        if self.ranker is not None:
            items = self._ranked(users)[1]
        elif self.blocks is not None:
            if k > self.blocks.n:
                return None
            items = self._block(users).items[:, :k]  # the towers' top n lead the block, in their order
        else:
            started = time.perf_counter()
            items = self.posted().top(self.view.user_vectors(users), self.state.seen, users, k)[0]
            self.seconds["retrieve"] += time.perf_counter() - started
        items = items[:, :k]
        if items.shape[1] < k or (items < 0).any():
            return None  # ranked in full by __call__, which counts the users then
        self.users_scored += len(users)
        return items

    def _retrieval_scores(self, users: np.ndarray) -> torch.Tensor:
        """The towers' score of every video as a ranking at t uses them (:func:`as_of_scores`)."""
        started = time.perf_counter()
        raw = self.view.scores(self.view.user_vectors(users))
        scores = as_of_scores(raw, self.state.seen, self.state.item_posted, users, in_place=True)
        self.seconds["retrieve"] += time.perf_counter() - started
        return scores

    def _block(self, users: np.ndarray) -> RankBlock:
        if self.blocks is None:
            block, built = candidate_block(self.view, self.state, users, self.n, self.popular(), self.posted()), True
        else:
            block, built = self.blocks.of(users)
        if built:
            for key, value in block.seconds.items():
                self.seconds[key] += value
        return block

    def _ranked(self, users: np.ndarray) -> tuple[RankBlock, np.ndarray]:
        """The batch's block, and its candidates in the ranker's order (rows x width, -1 cells last)."""
        assert self.ranker is not None
        block = self._block(users)
        started = time.perf_counter()
        order = rank_order(self.ranker, block.features, block.valid)
        self.seconds["rank"] += time.perf_counter() - started
        return block, np.take_along_axis(block.items, order, axis=1)

    def popular(self) -> np.ndarray | None:
        """The popular videos the ranker ranks behind the towers' list, as of the state's instant."""
        if self.ranker is None or not self.ranker.n_popular:
            return None
        if self._popular is None:
            self._popular = popular_items(self.state, self.ranker.n_popular, self.ranker.popular_source)
        return self._popular

    def posted(self) -> PostedVideos:
        """The videos posted before the state's instant, as the candidate search reads them (built once)."""
        if self._posted is None:
            self._posted = PostedVideos.of(self.view.video_vectors, self.state.item_posted)
        return self._posted

    def users_per_second(self, parts: tuple[str, ...] = ("features", "rank")) -> float:
        """Users a second through ``parts`` of the work (default: the ranking step, without retrieval)."""
        spent = sum(self.seconds.get(p, 0.0) for p in parts)
        return self.users_scored / spent if spent else float("nan")


def evaluated_stacks(view: TowerView, state: AsOfState, ranker: Ranker | None) -> dict[str, RankedRetrieval]:
    """Retrieval alone (``"retrieval"``) and, with a ranker, retrieval + ranker (``"ranked"``) over one set of
    candidate blocks, so that evaluating both together retrieves once per batch of users."""
    if ranker is None:
        return {"retrieval": RankedRetrieval(view, state, None)}
    ranked = RankedRetrieval(view, state, ranker, ranker.n_candidates)
    ranked.blocks = CandidateBlocks(view, state, ranker.n_candidates, ranked.popular(), ranked.posted())
    return {
        "retrieval": RankedRetrieval(view, state, None, ranker.n_candidates, blocks=ranked.blocks),
        "ranked": ranked,
    }
