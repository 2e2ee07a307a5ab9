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

    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        t = self.towers
        return user_vectors(t.model, self.histories, self.catalogue, t.stats, np.asarray(users, dtype=np.int64))

    def scores(self, user_vecs: torch.Tensor) -> torch.Tensor:
        """(users, n_items) float32: the towers' score of every video for each user."""
        return user_vecs @ self.video_vectors.T

    def engagement(self, user_vecs: torch.Tensor, items: np.ndarray) -> np.ndarray:
        """float32 (rows, width, 3): the engagement head on each (row's user, ``items[row, col]``); NaN at -1."""
        rows, width = items.shape
        safe = torch.from_numpy(np.maximum(items, 0).reshape(-1))
        u = user_vecs.repeat_interleave(width, dim=0)
        with torch.inference_mode():
            out = self.towers.model.engagement(u, self.video_vectors[safe]).numpy().astype(np.float32)
        out = out.reshape(rows, width, -1)
        out[items < 0] = np.nan
        return out


def tower_view(
    towers: Towers,
    user_ids: np.ndarray,
    videos: pl.DataFrame,
    interactions: pl.DataFrame,
    follows: pl.DataFrame,
    t_ms: int,
    user_cut_ms: np.ndarray | None = None,
) -> TowerView:
    """The towers' view of the world just before ``t_ms`` (frames as :mod:`rec_core.model.features` reads them);
    with ``user_cut_ms`` (int64 per user of ``user_ids``), each user's interactions and follows also end at their
    own cut, for their history and for the catalogue's counts alike (:func:`~rec_core.rank.state.state_at`)."""
    if user_cut_ms is not None:
        interactions, follows = (before_user_cuts(f, user_ids, user_cut_ms, t_ms) for f in (interactions, follows))
    catalogue = build_catalogue(videos, interactions, towers.text, towers.vocabs, t_ms)
    histories = build_histories(user_ids, interactions, follows, catalogue, towers.vocabs, t_ms)
    vectors = video_vectors(towers.model, catalogue, towers.stats)
    return TowerView(towers, catalogue, histories, vectors, int(t_ms))


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
class PostedCandidates:
    """The towers' best videos posted before t that a user has not watched, by the product in tiles
    (:mod:`rec_core.feed.tiled_top_k`): the candidates a ranking at t retrieves, without making each user's score of
    every video (:func:`as_of_scores`' rows: 2 GB a batch of 1,024 users at 500,000 videos, written and read twice,
    which was most of an evaluation's time at the large scale). The product is over the posted videos alone, so
    one not posted yet is never a candidate; ties go to the lower index, as in the whole catalogue."""

    posted: np.ndarray  # int64: the videos posted before t, ascending
    place: np.ndarray  # int64 per video: its column among ``posted``, -1 where not posted
    videos_t: torch.Tensor  # float32 (dim, len(posted)), contiguous
    n_items: int

    @classmethod
    def of(cls, video_vectors: torch.Tensor, posted: np.ndarray) -> PostedCandidates:
        """From every video's vector (float32 [n_items, dim], a :class:`TowerView`'s) and the posted mask."""
        columns = np.flatnonzero(np.asarray(posted, dtype=bool))
        place = np.full(len(posted), -1, dtype=np.int64)
        place[columns] = np.arange(len(columns))
        with torch.inference_mode():
            videos_t = video_vectors[torch.from_numpy(columns)].float().T.contiguous()
        return cls(columns.astype(np.int64), place, videos_t, len(posted))

    def top(self, user_vecs: torch.Tensor, seen: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's best ``n`` posted videos not in its row of ``seen`` (rows aligned with ``user_vecs``): (items
        int64 [rows, min(n, n_items)], scores float32), -1 / NaN past the last one (a user who has seen almost
        every posted video)."""
        rows, width = user_vecs.shape[0], min(n, self.n_items)
        indptr, excluded = self._exclusions(seen, rows)
        k = min(width, len(self.posted))
        columns, values, _ = product_top_k(user_vecs.float().contiguous(), self.videos_t, k, indptr, excluded)
        items = np.full((rows, width), -1, dtype=np.int64)
        scores = np.full((rows, width), np.nan, dtype=np.float32)
        found = np.isfinite(values)
        items[:, :k] = np.where(found, self.posted[columns], -1)
        scores[:, :k] = np.where(found, values, np.nan)
        return items, scores

    def scores_of(self, user_vecs: torch.Tensor, seen: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
        """float32 [rows, len(items)]: the towers' score of each of ``items`` (posted videos) for each row's user,
        ``-inf`` where the row has seen it (as :func:`as_of_scores` scores them)."""
        columns = self.place[np.asarray(items, dtype=np.int64)]
        if (columns < 0).any():
            raise ValueError("scores_of takes posted videos only")
        with torch.inference_mode():
            out = (user_vecs.float() @ self.videos_t[:, torch.from_numpy(columns)]).numpy()
        out[seen[:, items].toarray() > 0] = -np.inf
        return out

    def _exclusions(self, seen: sp.csr_matrix, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows' seen videos as columns among the posted ones, ascending per row (product_top_k's layout)."""
        seen = sp.csr_matrix(seen, copy=True)
        if seen.shape[0] != rows:
            raise ValueError(f"seen has {seen.shape[0]} rows for {rows} user vectors")
        seen.sort_indices()
        column = self.place[seen.indices]
        inside = column >= 0  # a seen video outside the product needs no exclusion
        row = np.repeat(np.arange(rows), np.diff(seen.indptr))[inside]
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=rows), out=indptr[1:])
        return indptr, column[inside].astype(np.int64)
