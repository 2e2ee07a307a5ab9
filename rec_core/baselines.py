"""Classical baselines, scored over the full catalogue like the two-tower model.

* MostPop: training popularity (the same list for everyone);
* ItemKNN: item-item cosine similarity on the binary training matrix, pruned to
  each item's top ``neighbours``, with a shrinkage term for rare co-occurrences;
* EASE (Steck, WWW 2019): the closed-form linear item-item model
  ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``. A dense inverse over the whole
  catalogue does not fit at 50,000 videos on this machine, so EASE is fitted on
  the ``max_items`` most popular training items; other items score -inf
  (ID-based models know nothing of them anyway).

Each has ``fit(split)`` and ``score(user_idx) -> torch.Tensor`` of shape
(len(user_idx), n_items). None of them can score a cold item above -inf or 0:
that is what the cold-video recall of the two-tower model is compared against.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from rec_core.metrics import build_targets, evaluate_targets
from rec_core.split import Split, SplitPart, train_matrix

log = logging.getLogger(__name__)


class Recommender(Protocol):
    name: str

    def fit(self, split: Split) -> Recommender: ...

    def score(self, user_idx: np.ndarray) -> torch.Tensor: ...


class MostPop:
    name = "most_pop"

    def fit(self, split: Split) -> MostPop:
        counts = np.bincount(split.train.item_idx, minlength=split.n_items).astype(np.float32)
        # A tiny tie-breaker by index keeps rankings deterministic among equally popular items.
        self.scores = torch.from_numpy(counts - np.arange(split.n_items, dtype=np.float32) * 1e-9)
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        return self.scores.expand(len(user_idx), -1)


class ItemKNN:
    name = "item_knn"

    def __init__(self, neighbours: int = 200, shrink: float = 10.0) -> None:
        self.neighbours, self.shrink = neighbours, shrink

    def fit(self, split: Split) -> ItemKNN:
        x = train_matrix(split).tocsc().astype(np.float32)
        self.history = train_matrix(split)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        co = (x.T @ x).tocsr().astype(np.float32)
        co.setdiag(0.0)
        co.eliminate_zeros()
        rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
        co.data /= norms[rows] * norms[co.indices] + self.shrink
        self.sim = _top_k_per_row(co, self.neighbours)
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        scores = (self.history[user_idx] @ self.sim).toarray()
        return torch.from_numpy(scores.astype(np.float32))


class EASE:
    name = "ease"

    def __init__(self, l2: float = 200.0, max_items: int = 15_000) -> None:
        self.l2, self.max_items = l2, max_items

    def fit(self, split: Split) -> EASE:
        x = train_matrix(split)
        counts = np.asarray(x.sum(axis=0)).ravel()
        popular = np.argsort(-counts, kind="stable")[: min(self.max_items, int((counts > 0).sum()))]
        self.items = np.sort(popular)
        self.n_items = split.n_items
        xs = x[:, self.items].astype(np.float64)
        gram = (xs.T @ xs).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        self.b = torch.from_numpy(b.astype(np.float32))
        self.history = x[:, self.items].tocsr()
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(self.history[user_idx].toarray())
        out = torch.full((len(user_idx), self.n_items), float("-inf"))
        out[:, torch.from_numpy(self.items)] = rows @ self.b
        return out


def default_baselines() -> list[Recommender]:
    return [MostPop(), ItemKNN(), EASE()]


def evaluate_baselines(split: Split, on: SplitPart = "test") -> dict[str, dict[str, float]]:
    """Fit every baseline on the training part and evaluate it on ``on`` over the full catalogue."""
    targets = build_targets(split, on)
    out: dict[str, dict[str, float]] = {}
    for model in default_baselines():
        started = time.monotonic()
        model.fit(split)
        fitted = time.monotonic()
        out[model.name] = evaluate_targets(model.score, targets)
        log.info(
            "%s: fit %.1fs, evaluate %.1fs, recall@50 %.4f",
            model.name,
            fitted - started,
            time.monotonic() - fitted,
            out[model.name]["recall@50"],
        )
    return out


def _top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row."""
    matrix = matrix.tocsr()
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    keep = np.zeros(len(data), dtype=bool)
    for row in range(matrix.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-data[lo:hi], k)[:k]] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=matrix.shape)
