"""Classical baselines, scored over the full catalogue like the two-tower model.

* :class:`MostPop`: training popularity, the same list for everyone. Popularity
  is the number of distinct users who watched the video in training; with
  ``half_life_days`` each (user, video) pair is weighted by
  ``0.5 ** (age / half_life)``, its age being the time from the pair's latest
  training interaction to ``Split.valid_start`` (the validation cut; under
  leave-last-out, the end of the training data), so recent hits count more.
* :class:`ItemKNN`: item-item cosine similarity on the binary training matrix,
  ``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink)``; every item
  keeps its ``neighbours`` most similar items, and a user's score for item j is
  the summed similarity of j's neighbours that the user watched.
* :class:`EASE` (Steck, WWW 2019): the closed-form linear item-item model
  ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``, scored as ``X_u B``. The dense
  inverse costs O(n³) time and O(n²) memory, so EASE is fitted on the
  ``max_items`` most popular training items only; every other item scores
  ``-inf``. On the default synthetic world (50,000 videos, ~40,000 of them in
  training) the default 10,000 items carry 72 % of the training pairs, fit in
  ~30 s on 2 busy cores with ~2 GB, and lose ~1 % of validation recall@50
  against 20,000 items (which take ~140 s: the inverse is cubic).

Each has ``fit(split) -> self`` and ``score(user_idx) -> torch.Tensor`` of shape
(len(user_idx), n_items). ItemKNN and EASE add a tiny popularity prior
(< 1e-6) to every score so that ties -- above all the all-zero rows of users
without training history -- fall back to popularity order instead of to
whatever order ``topk`` happens to return. ID-based models know nothing of
items without a training interaction: these score at most the prior (or
``-inf`` for EASE), which is what the two-tower model's cold-video recall is
compared against.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import lapack

from rec_core.data.split import Split, SplitPart
from rec_core.data.split_matrices import interaction_matrix, train_matrix
from rec_core.eval.ranking_metrics import (
    DEFAULT_KS,
    Population,
    ServedAs,
    TopScorer,
    UserMetrics,
    build_targets,
    first_not_in,
    popularity_order,
    user_metrics,
)
from rec_core.progress import Progress

log = logging.getLogger(__name__)

AS_SERVED = " (as served)"

# Small enough not to reorder scores that differ, large enough to survive float32 around 0..1.
TIE_BREAK = 1e-6
# Dense row blocks of an item x item product are kept near this many cells (256 MB of float32).
_BLOCK_CELLS = 1 << 26


class Recommender(Protocol):
    name: str

    def fit(self, split: Split) -> Recommender: ...

    def score(self, user_idx: np.ndarray) -> torch.Tensor: ...


def popularity(split: Split, half_life_days: float | None = None) -> np.ndarray:
    """Training popularity per item (float64, n_items): distinct users, optionally recency-weighted."""
    train = split.train
    if half_life_days is None:
        pairs = train_matrix(split)
        return np.bincount(pairs.indices, minlength=split.n_items).astype(np.float64)
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be positive, got {half_life_days}")
    # Latest training interaction of each (user, item) pair: train is sorted by ts, so the last row wins.
    key = train.user_idx.astype(np.int64) * split.n_items + train.item_idx
    _, last = np.unique(key[::-1], return_index=True)
    rows = len(key) - 1 - last
    age_days = (split.valid_start_ms - train.ts_ms[rows]) / 86_400_000.0
    weights = np.power(0.5, np.maximum(age_days, 0.0) / half_life_days)
    return np.bincount(train.item_idx[rows], weights=weights, minlength=split.n_items)


def popularity_prior(split: Split) -> torch.Tensor:
    """Popularity as distinct values in (0, 1]: 1 for the most popular item; ties go to the lower index."""
    pop = popularity(split)
    order = np.lexsort((np.arange(split.n_items), -pop))
    prior = np.empty(split.n_items, dtype=np.float32)
    prior[order] = 1.0 - np.arange(split.n_items, dtype=np.float32) / max(split.n_items, 1)
    return torch.from_numpy(prior)


class MostPop:
    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days
        # Distinct names, so plain and recency-weighted popularity can be evaluated side by side.
        self.name = "most_pop" if half_life_days is None else f"most_pop_recent_{half_life_days:g}d"

    def fit(self, split: Split) -> MostPop:
        pop = popularity(split, self.half_life_days)
        order, ranks = popularity_order(pop)
        self.popularity, self.order = pop, order
        self.scores = torch.from_numpy(ranks)
        self.history = interaction_matrix(split, "train", "binary")  # what an evaluation masks: left out of top()
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        """The same row for every user; a read-only expanded view, not a copy."""
        return self.scores.expand(len(user_idx), -1)

    __call__ = score

    def top(self, user_idx: np.ndarray, k: int) -> np.ndarray | None:
        """Each user's first ``k`` by :meth:`score` that they did not interact with in training (a TopScorer)."""
        return first_not_in(self.order, self.history, user_idx, k)


class ItemKNN:
    name = "item_knn"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0) -> None:
        if neighbours < 1:
            raise ValueError("neighbours must be at least 1")
        if shrink < 0:
            raise ValueError("shrink must not be negative")
        self.neighbours, self.shrink = neighbours, shrink

    def fit(self, split: Split) -> ItemKNN:
        x = train_matrix(split)
        n = split.n_items
        counts = np.bincount(x.indices, minlength=n).astype(np.float32)
        norms = np.sqrt(counts)
        xt = x.T.tocsr()
        active = np.flatnonzero(counts > 0)  # items without training users have no neighbours
        k = min(self.neighbours, max(n - 1, 1))
        block = max(1, _BLOCK_CELLS // max(n, 1))
        targets, neighbours, sims = [], [], []
        progress = Progress("item_knn similarities", len(active), every_s=10.0, logger=log)
        for start in range(0, len(active), block):
            items = active[start : start + block]
            co = (xt[items] @ x).tocsr()  # co-occurrence counts of each item in the block with every item
            rows = np.repeat(np.arange(len(items)), np.diff(co.indptr))
            co.data /= norms[items][rows] * norms[co.indices] + self.shrink
            dense = torch.from_numpy(co.toarray())
            dense[torch.arange(len(items)), torch.from_numpy(items)] = 0.0  # an item is not its own neighbour
            values, idx = torch.topk(dense, k, dim=1)
            keep = values > 0
            targets.append(np.repeat(items, keep.sum(1).numpy()))
            neighbours.append(idx[keep].numpy())
            sims.append(values[keep].numpy())
            progress.advance(len(items))
        # W[j, i] = sim(i, j) for each of item i's neighbours j, so X_u @ W sums, for every target i,
        # the similarities of its neighbours that the user watched.
        self.weights = sp.csr_matrix(
            (_cat(sims, np.float32), (_cat(neighbours, np.int64), _cat(targets, np.int64))), shape=(n, n)
        )
        self.history = x
        self.prior = popularity_prior(split) * TIE_BREAK
        log.info("item_knn: %d items with neighbours, %d similarities kept", len(active), self.weights.nnz)
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        scores = torch.from_numpy((self.history[user_idx] @ self.weights).toarray())
        return scores.add_(self.prior)


class EASE:
    name = "ease"

    def __init__(self, l2: float = 200.0, max_items: int = 10_000) -> None:
        if l2 <= 0:
            raise ValueError("l2 must be positive (it keeps XᵀX + λI invertible)")
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.l2, self.max_items = l2, max_items

    def fit(self, split: Split) -> EASE:
        x = train_matrix(split)
        counts = np.bincount(x.indices, minlength=split.n_items)
        n_fit = min(self.max_items, int((counts > 0).sum()))
        if n_fit < int((counts > 0).sum()):
            log.info("ease: fitting the %d most popular of %d training items", n_fit, int((counts > 0).sum()))
        self.items = np.sort(np.argsort(-counts, kind="stable")[:n_fit])
        xs = x[:, self.items].tocsr()
        started = time.monotonic()
        gram = _gram(xs)
        gram[np.diag_indices(n_fit)] += np.float32(self.l2)
        check_cols = np.random.default_rng(0).choice(n_fit, size=min(8, n_fit), replace=False)
        check = gram[:, check_cols].copy()
        p = _spd_inverse(gram)  # gram is overwritten
        del gram
        # A silently wrong LAPACK result would be a silently wrong model: check a few columns of P G = I.
        residual = np.abs(p @ check - np.eye(n_fit, dtype=np.float32)[:, check_cols]).max() if n_fit else 0.0
        if not residual < 1e-2:
            raise RuntimeError(f"ease: inverse of the Gram matrix is inaccurate (residual {residual:.3g})")
        b = torch.from_numpy(p)  # shares p's memory: B is built in place
        b.div_(-b.diagonal().clone())  # B[i, j] = -P[i, j] / P[j, j]
        b.fill_diagonal_(0.0)
        self.b = p
        self.history = xs
        self.n_items = split.n_items
        self.prior = popularity_prior(split)[torch.from_numpy(self.items)] * TIE_BREAK
        log.info("ease: %d items, λ=%g, Gram + inverse %.1fs", n_fit, self.l2, time.monotonic() - started)
        return self

    def score(self, user_idx: np.ndarray) -> torch.Tensor:
        # Sparse history rows times dense B: O(history x items), not a dense (users x items x items) product.
        fitted = torch.from_numpy(np.asarray(self.history[user_idx] @ self.b))
        out = torch.full((len(user_idx), self.n_items), float("-inf"))
        out[:, torch.from_numpy(self.items)] = fitted.add_(self.prior)
        return out


def default_baselines() -> list[Recommender]:
    return [MostPop(), ItemKNN(), EASE()]


@dataclass(slots=True)
class BaselineRun:
    """One baseline fitted and evaluated: its averages, and its per-user values for intervals."""

    name: str
    metrics: dict[str, float]  # the keys of evaluate_scores, plus fit_seconds and eval_seconds
    per_user: UserMetrics
    served: UserMetrics | None  # the same fitted model ranked as the feed would show it


def run_baselines(
    split: Split,
    on: SplitPart = "test",
    *,
    models: Sequence[Recommender] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    population: Population = "all",
    served: ServedAs | None = None,
) -> list[BaselineRun]:
    """Fit each baseline on the training part and evaluate it on ``on`` over the full catalogue."""
    targets = build_targets(split, on, population)
    out: list[BaselineRun] = []
    for model in default_baselines() if models is None else models:
        log.info("%s: fitting on %d training interactions", model.name, len(split.train))
        started = time.monotonic()
        model.fit(split)
        fitted = time.monotonic()
        per_user = user_metrics(model if isinstance(model, TopScorer) else model.score, targets, ks)
        metrics = per_user.summary()
        metrics["fit_seconds"] = round(fitted - started, 2)
        metrics["eval_seconds"] = round(time.monotonic() - fitted, 2)
        as_served = user_metrics(model.score, targets, ks, served=served) if served is not None else None
        out.append(BaselineRun(model.name, metrics, per_user, as_served))
        log.info(
            "%s: fit %.1fs, evaluate %.1fs on %d users: %s",
            model.name,
            metrics["fit_seconds"],
            metrics["eval_seconds"],
            int(metrics["users"]),
            ", ".join(f"{key} {metrics[key]:.4f}" for key in ("recall@20", "ndcg@20", "recall@50") if key in metrics),
        )
    return out


def evaluate_baselines(
    split: Split,
    on: SplitPart = "test",
    *,
    models: Sequence[Recommender] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    population: Population = "all",
    served: ServedAs | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`run_baselines`, averages only.

    Returns ``{name: metrics}`` with the keys of :func:`rec_core.eval.ranking_metrics.evaluate_scores`
    plus ``fit_seconds`` and ``eval_seconds``; with ``served``, also ``{name + AS_SERVED: metrics}``.
    """
    out: dict[str, dict[str, float]] = {}
    for run in run_baselines(split, on, models=models, ks=ks, population=population, served=served):
        out[run.name] = run.metrics
        if run.served is not None:
            out[run.name + AS_SERVED] = run.served.summary()
    return out


# ---- helpers -----------------------------------------------------------------


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _gram(x: sp.csr_matrix) -> np.ndarray:
    """Dense ``XᵀX`` (float32), built from sparse row blocks so no huge sparse product is ever held."""
    n = x.shape[1]
    xt = x.T.tocsr()
    gram = np.empty((n, n), dtype=np.float32)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, n, block):
        gram[start : start + block] = (xt[start : start + block] @ x).toarray()
    return gram


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float32 matrix, overwriting ``matrix``.

    LAPACK's Cholesky (spotrf) and inverse-from-Cholesky (spotri) cost ~n³ flops,
    half of a general LU inverse, and work in place.
    """
    # The matrix is symmetric, so its transpose is the same matrix in Fortran order: no copy.
    fortran = matrix.T
    factor, info = lapack.spotrf(fortran, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factorisation failed (info={info}); is λ positive?")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse from the Cholesky factor failed (info={info})")
    # spotri fills the lower triangle only; mirror it into the upper one.
    full = torch.from_numpy(inverse).tril()
    full += full.tril(-1).T
    return full.numpy()
