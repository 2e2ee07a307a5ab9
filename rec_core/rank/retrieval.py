"""The towers as of an instant: their inputs at t, the candidates they retrieve, what they say about a pair.

The ranker reads the towers twice: for training examples as of the validation cut (where the towers' own training
ended, so their inputs are exactly training's: :func:`rec_core.model.training.prepare`) and when it scores, as of
the test cut or the batch's "now". :func:`tower_view` builds the towers' catalogue and user histories as of any t,
with the model's own vocabularies and feature statistics, from the same frames, so a candidate's tower score,
position and engagement prediction are as much "as of t" as the ranker's other features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from rec_core.data.split import before_user_cuts
from rec_core.eval.ranking_metrics import excluded_rows
from rec_core.feed.engagement import EngagementHead
from rec_core.feed.tiled_top_k import product_top_k
from rec_core.model.features import Catalogue, FeatureStats, Histories, build_catalogue, build_histories
from rec_core.model.towers import TwoTower
from rec_core.model.training import TrainingData, user_vectors, video_vectors
from rec_core.model.vocabs import Vocabs

NOT_POSTED_PENALTY = 10.0  # scores are cosines: minus 10 puts a video below every posted one


@dataclass(frozen=True, slots=True)
class Towers:
    """A trained two-tower model with what it needs to read the lake: vocabularies, scales, caption vectors."""

    model: TwoTower
    vocabs: Vocabs
    stats: FeatureStats
    text: np.ndarray  # (n_items, text_dim) float32, aligned with the catalogue (videos sorted by id)

    @classmethod
    def from_training(cls, model: TwoTower, data: TrainingData) -> Towers:
        return cls(model.eval(), data.vocabs, data.stats, data.catalogue.text)


@dataclass(frozen=True, slots=True)
class TowerView:
    """The towers' inputs as of ``t_ms`` and every video's vector then."""

    towers: Towers
    catalogue: Catalogue
    histories: Histories
    video_vectors: torch.Tensor  # (n_items, dim)
    t_ms: int
    head: EngagementHead  # the towers' engagement head, as the batch and the API run it

    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        t = self.towers
        return user_vectors(t.model, self.histories, self.catalogue, t.stats, np.asarray(users, dtype=np.int64))

    def scores(self, user_vecs: torch.Tensor) -> torch.Tensor:
        """(users, n_items) float32: the towers' score of every video for each user."""
        return user_vecs @ self.video_vectors.T

    def engagement(self, user_vecs: torch.Tensor, items: np.ndarray) -> np.ndarray:
        """float32 (rows, width, 3): the engagement head on each (row's user, ``items[row, col]``); NaN at -1. The
        serving paths' implementation (:meth:`~rec_core.feed.engagement.EngagementHead.over_lists`), so the ranker
        is trained and judged on the floats it is served with."""
        videos = self.video_vectors.numpy()
        return self.head.over_lists(user_vecs.numpy(), items, items >= 0, lambda codes: videos[codes])


def tower_view(
    towers: Towers,
    user_ids: np.ndarray,
    videos: pl.DataFrame,
    interactions: pl.DataFrame,
    follows: pl.DataFrame,
    t_ms: int,
    user_cut_ms: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> TowerView:
    """The towers' view of the world just before ``t_ms`` (frames as :mod:`rec_core.model.features` reads them);
    with ``user_cut_ms`` (int64 per user of ``user_ids``), each user's interactions and follows also end at their
    own cut, for their history and for the catalogue's counts alike (:func:`~rec_core.rank.state.state_at`).
    With ``users`` (positions in ``user_ids``), only their histories are built, and only they can be scored."""
    if user_cut_ms is not None:
        interactions, follows = (before_user_cuts(f, user_ids, user_cut_ms, t_ms) for f in (interactions, follows))
    catalogue = build_catalogue(videos, interactions, towers.text, towers.vocabs, t_ms)
    histories = build_histories(user_ids, interactions, follows, catalogue, towers.vocabs, t_ms, users)
    vectors = video_vectors(towers.model, catalogue, towers.stats)
    return TowerView(towers, catalogue, histories, vectors, int(t_ms), EngagementHead.of(towers.model.engagement))


def as_of_scores(
    scores: torch.Tensor, seen: sp.csr_matrix, posted: np.ndarray, users: np.ndarray, *, in_place: bool = False
) -> torch.Tensor:
    """A copy of ``scores`` (rows aligned with ``users``) as a ranking at t can use them: each user's watched videos
    at ``-inf``, videos not ``posted`` yet moved below every posted one (in their own order). ``in_place``: into
    ``scores`` itself, for a caller that made them and keeps no other use (2 GB a batch at the large scale).

    Offline, the catalogue holds videos posted after t; a ranking made at t could not have shown them, and their
    creation time is itself a label (on MovieLens a film's ``created_at`` is its first rating), so they are never
    candidates; they stay in the tail so the evaluation still ranks the full catalogue.
    """
    sub = seen[np.asarray(users, dtype=np.int64)]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    # One pass makes the copy (if any) and moves the unposted videos down (x - 0 is x exactly).
    penalty = torch.from_numpy(np.where(posted, 0.0, NOT_POSTED_PENALTY).astype(np.float32))
    out = scores.sub_(penalty) if in_place else scores - penalty
    out[torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))] = float("-inf")
    return out


@dataclass(frozen=True, slots=True)
class PostedVideos:
    """The videos posted before an instant as the towers' candidate search reads them: their vectors as the columns
    of one matrix, in index order, and each video's column among them.

    Offline, the catalogue holds videos posted after t, which a ranking made at t could not have shown
    (:func:`as_of_scores`): the candidates are searched among the posted ones alone, so a top-k over them needs
    no mask, and it is made tile by tile (:func:`~rec_core.feed.tiled_top_k.product_top_k`) without writing the
    (users, n_items) scores (2 GB a batch of 1,024 at 500,000 videos, twice over by the mask)."""

    index: np.ndarray  # int64 [n_posted]: the posted videos, ascending
    column: np.ndarray  # int64 [n_items]: each video's column in ``vectors_t``, -1 where not posted
    vectors_t: torch.Tensor  # float32 (dim, n_posted), contiguous

    @classmethod
    def of(cls, video_vectors: torch.Tensor, posted: np.ndarray) -> PostedVideos:
        index = np.flatnonzero(posted).astype(np.int64)
        column = np.full(len(posted), -1, dtype=np.int64)
        column[index] = np.arange(len(index))
        with torch.inference_mode():
            vectors_t = video_vectors[torch.from_numpy(index)].T.contiguous()
        return cls(index, column, vectors_t)

    def top(
        self, user_vecs: torch.Tensor, seen: sp.csr_matrix, users: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's best ``n`` posted videos that its user (``users``, rows of ``seen``) has not seen, by the
        towers' score, best first, ties to the lower index: (items int64 [rows, n], scores float32 [rows, n]),
        -1 / NaN past the last one (a user who has seen almost everything). ``n`` at most the catalogue's size."""
        width = min(n, len(self.column))
        k = min(width, len(self.index))
        indptr, excluded = excluded_rows(seen, users, self.column)
        with torch.inference_mode():
            at, values, _ = product_top_k(user_vecs, self.vectors_t, k, indptr, excluded)
        found = np.isfinite(values)
        items = np.full((len(users), width), -1, dtype=np.int64)
        scores = np.full((len(users), width), np.nan, dtype=np.float32)
        items[:, :k] = np.where(found, self.index[np.clip(at, 0, max(len(self.index) - 1, 0))], -1)
        scores[:, :k] = np.where(found, values, np.nan)
        return items, scores
