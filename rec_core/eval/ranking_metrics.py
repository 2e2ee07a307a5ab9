"""Full-catalogue ranking metrics.

Every evaluated user is ranked against the whole catalogue (no sampled
negatives), in batches: ``score_fn`` returns a (batch, n_items) score matrix,
the items the user interacted with in TRAINING are set to ``-inf``, and the
top ``max(ks)`` is selected exactly (:mod:`rec_core.feed.top_k_kernel`). A scorer whose ranking starts with a
list it already holds (:class:`TopScorer`: retrieval's candidates, the
ranker's order, popularity) hands over its top ``max(ks)`` instead, and no
(batch, n_items) matrix is built: at 500,000 videos that matrix is 2 GB a
batch. Its list is used only where it holds no training item, so the figures
are the full ranking's either way (tests/test_ranker_release.py checks them
per user).

Definitions (binary relevance, averaged over the evaluated users):

* the relevant set ``R_u`` of a user is the items of their held-out positives
  (see ``Split.positive``) minus the items they already interacted with in
  training -- those are excluded from the ranking, so counting them would
  only cap every model's recall for no information;
* evaluated users are those with a non-empty ``R_u``, restricted by
  ``population`` to all, warm (has a train interaction) or cold-start users;
* ``recall@K = |top_K ∩ R_u| / |R_u|`` (the standard definition; it cannot
  reach 1 when ``|R_u| > K``);
* ``ndcg@K = DCG@K / IDCG@K`` with ``DCG = Σ_r rel_r / log2(r + 2)`` over the
  0-based ranks r < K and the ideal DCG putting ``min(|R_u|, K)`` hits first;
* ``hit_rate@K``: 1 if any relevant item is in the top K;
* ``coverage@K``: fraction of the full catalogue that appears in at least one
  evaluated user's top K;
* ``cold_recall@K``: recall restricted to relevant items that are cold (no
  train interaction, ``Split.cold_item_mask``), averaged over the users that
  have at least one such item; ``nan`` when no user has one. ``cold_users``
  says how many users it averaged over.

With ``served`` (:class:`ServedAs`), the top K is not the plain score order
but the feed the product would show: the feed policy
(:mod:`rec_core.feed.policy`: creator cap, and fresh slots reserved for items
that appeared after the training cut) applied to the model's ranking. Any
scorer can be evaluated that way, baselines included, so a comparison "as
served" is like for like.

Ties in the full scores are broken by the lower item index; a scorer's own
list (``TopScorer``) keeps its own order. A ``-inf`` (or NaN) score
means "not recommended": such an item never counts as a hit, nor towards
coverage, even when K exceeds the number of scorable items.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch

from rec_core.data.split import Split, SplitPart
from rec_core.data.split_matrices import interaction_matrix
from rec_core.feed.membership_kernel import in_rows as membership
from rec_core.feed.policy import FeedPolicy, select_eligible
from rec_core.feed.tiled_top_k import product_top_k
from rec_core.feed.top_k_kernel import top_k_rows
from rec_core.progress import Progress

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], torch.Tensor | np.ndarray]
Population = Literal["all", "warm", "cold"]


@runtime_checkable
class TopScorer(Protocol):
    """A ScoreFn whose ranking starts with a short list it already holds (retrieval's candidates, the ranker's
    order, popularity): ``top`` hands over each row's first ``k`` items, best first, as ``torch.topk`` of its full
    scores would, so the (rows, n_items) matrix is never built. ``None`` where it cannot (a row listing fewer than
    ``k``): that batch is scored in full. Its list must leave out what the full scores put at ``-inf``."""

    def __call__(self, users: np.ndarray) -> torch.Tensor | np.ndarray: ...

    def top(self, users: np.ndarray, k: int) -> np.ndarray | None: ...


@dataclass(frozen=True, slots=True)
class FreshScores:
    """A ScoreFn whose every call returns a new tensor that nothing else holds (a matrix product, say), so the
    evaluation masks it in place: at 495,000 videos a copy is 2 GB of new memory per batch of 1,024 users.
    (:class:`ProductScores` keeps the same promise with one buffer it writes each product into.)"""

    fn: Callable[[np.ndarray], torch.Tensor]

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.fn(users)


@dataclass(slots=True)
class ScoresBuffer:
    """Full-catalogue score rows written batch after batch into one tensor, grown when a batch is larger.

    A new (1,024 x 500,000) product a batch is 2 GB of fresh pages for the kernel to fault in and zero, which cost as
    much as the product itself and varied with the machine's state. A product written here holds until the next."""

    n_items: int
    _rows: torch.Tensor | None = None

    def product(self, users: torch.Tensor, items_t: torch.Tensor) -> torch.Tensor:
        """``users @ items_t`` (users, n_items) in the buffer's leading rows."""
        if self._rows is None or len(self._rows) < len(users):
            self._rows = None  # the old rows go before the new ones are taken
            self._rows = torch.empty((len(users), self.n_items), dtype=torch.float32)
        return torch.matmul(users, items_t, out=self._rows[: len(users)])


@dataclass(frozen=True, slots=True)
class ProductScores:
    """Users' vectors against every item's as a ScoreFn and a :class:`TopScorer`, for an evaluation whose
    training items are ``exclude`` (users x items): the top k of a batch is made tile by tile with the row's
    training items left out (:func:`~rec_core.feed.tiled_top_k.product_top_k`), so its (rows, n_items) scores,
    2 GB a batch of 1,024 at 500,000 videos, are never written; the full scores, where a batch needs them, go into
    one buffer, as :class:`FreshScores` promise (nothing else reads them)."""

    user_vectors: Callable[[np.ndarray], torch.Tensor]
    # float32 (dim, n_items): the (n_items, dim) vectors transposed as a view, the layout FreshScores' product
    # reads, so both give the same bits (a contiguous copy takes another BLAS kernel: on an AMD EPYC the last bits
    # of its scores differed from the plain product's; on the AMX Xeon they did not).
    items_t: torch.Tensor
    exclude: sp.csr_matrix
    buffer: ScoresBuffer

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return self.buffer.product(self.user_vectors(users), self.items_t)

    def top(self, users: np.ndarray, k: int) -> np.ndarray | None:
        indptr, excluded = excluded_rows(self.exclude, users)
        with torch.inference_mode():
            items, values, _ = product_top_k(self.user_vectors(users), self.items_t, k, indptr, excluded)
        return items if np.isfinite(values).all() else None  # fewer than k scorable: ranked in full


def excluded_rows(
    matrix: sp.csr_matrix, users: np.ndarray, columns: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``users`` of ``matrix`` as :func:`~rec_core.feed.tiled_top_k.product_top_k` reads exclusions: (indptr
    int64 [len(users) + 1], column indices int64, ascending within each row). With ``columns`` (int64 per column of
    ``matrix``: its number in the product's columns, -1 where the product has none), renumbered so."""
    sub = matrix[np.asarray(users, dtype=np.int64)]
    sub.sort_indices()
    indices = sub.indices.astype(np.int64)
    if columns is None:
        return sub.indptr.astype(np.int64), indices
    indices = columns[indices]  # ascending columns keep their order
    keep = indices >= 0
    row = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))[keep]
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=len(users)), out=indptr[1:])
    return indptr, indices[keep]


DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


@dataclass(frozen=True, slots=True)
class EvalTargets:
    """What one evaluation ranks and against what; built once per (split, part, population)."""

    users: np.ndarray  # int64 user indices that are evaluated
    history: sp.csr_matrix  # n_users x n_items, train interactions (excluded from rankings)
    relevant: sp.csr_matrix  # n_users x n_items, held-out positives not in history
    cold_relevant: sp.csr_matrix  # relevant restricted to cold items
    n_items: int


@dataclass(frozen=True, slots=True)
class ServedAs:
    """Rank as the feed is served: ``policy`` over the scores, ``fresh`` items eligible for its fresh slots.

    In an offline evaluation the fresh items are the cold ones (first seen after the training cut): during the
    held-out period each of them was new when it appeared, which is what the policy's fresh slots are for.
    """

    policy: FeedPolicy
    fresh: np.ndarray  # bool per item
    creator_codes: np.ndarray  # int64 per item, dense codes 0..n_creators-1

    @property
    def n_creators(self) -> int:
        return int(self.creator_codes.max()) + 1 if len(self.creator_codes) else 0


def build_targets(split: Split, on: SplitPart = "test", population: Population = "all") -> EvalTargets:
    if on not in ("valid", "test"):
        raise ValueError(f"evaluate on 'valid' or 'test', got {on!r}")
    if population not in ("all", "warm", "cold"):
        raise ValueError(f"population must be all, warm or cold, got {population!r}")
    history = interaction_matrix(split, "train", "binary")
    held = interaction_matrix(split, on, "binary", positives_only=True)
    # Held-out items the user already had in training are unrankable (masked), so not targets.
    relevant = (held - held.multiply(history)).tocsr()
    relevant.eliminate_zeros()
    cold_relevant = relevant.multiply(split.cold_item_mask.astype(np.float32)[None, :]).tocsr()
    cold_relevant.eliminate_zeros()
    has_target = np.diff(relevant.indptr) > 0
    if population == "warm":
        has_target &= split.user_has_train
    elif population == "cold":
        has_target &= ~split.user_has_train
    return EvalTargets(
        users=np.flatnonzero(has_target).astype(np.int64),
        history=history,
        relevant=relevant,
        cold_relevant=cold_relevant,
        n_items=split.n_items,
    )


def evaluate_scores(
    score_fn: ScoreFn,
    split: Split,
    on: SplitPart = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    population: Population = "all",
    served: ServedAs | None = None,
) -> dict[str, float]:
    """Rank the full catalogue for every evaluated user and average the metrics.

    ``score_fn(user_idx)`` returns scores of shape (len(user_idx), n_items).
    Keys: ``recall@K``, ``ndcg@K``, ``hit_rate@K``, ``coverage@K``,
    ``cold_recall@K`` for each K in ``ks``, plus ``users`` (evaluated) and
    ``cold_users`` (users with a cold relevant item). :func:`user_metrics`
    keeps each user's values instead of their average.
    """
    return evaluate_targets(score_fn, build_targets(split, on, population), ks, batch_size, served)


def evaluate_targets(
    score_fn: ScoreFn,
    targets: EvalTargets,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    served: ServedAs | None = None,
) -> dict[str, float]:
    """:func:`evaluate_scores` on prebuilt targets (reuse them across epochs of a training loop)."""
    return user_metrics(score_fn, targets, ks, batch_size, served).summary()


@dataclass(frozen=True, slots=True)
class UserMetrics:
    """One evaluation's values per evaluated user, kept so that intervals can resample users.

    ``values`` holds ``recall@K``, ``ndcg@K``, ``hit_rate@K`` and ``cold_recall@K``
    as float64 arrays aligned with ``users`` (``cold_recall@K`` is NaN for a user
    without a cold relevant item); ``coverage`` the catalogue-level ``coverage@K``,
    which no single user has.
    """

    users: np.ndarray  # int64 user indices, the evaluated users
    ks: tuple[int, ...]
    values: dict[str, np.ndarray]
    coverage: dict[str, float]

    def mean(self, key: str) -> float:
        """The average of ``values[key]`` over the users that have one (NaN when none has)."""
        column = self.values[key]
        return float(np.nanmean(column)) if np.isfinite(column).any() else math.nan

    def summary(self) -> dict[str, float]:
        """The averages :func:`evaluate_scores` reports (same keys, same order)."""
        out: dict[str, float] = {}
        for k in self.ks:
            for name in ("recall", "ndcg", "hit_rate"):
                out[f"{name}@{k}"] = self.mean(f"{name}@{k}")
            out[f"coverage@{k}"] = self.coverage[f"coverage@{k}"]
            out[f"cold_recall@{k}"] = self.mean(f"cold_recall@{k}")
        out["users"] = float(len(self.users))
        # A user with a cold relevant item has a cold recall at every K.
        out["cold_users"] = float(np.isfinite(self.values[f"cold_recall@{self.ks[0]}"]).sum())
        return out

    def among(self, users: np.ndarray) -> UserMetrics:
        """These metrics for the evaluated users that ``users`` (indices) holds, in the same order; the catalogue's
        coverage has no meaning for a subset of users and is NaN."""
        keep = np.isin(self.users, users)
        return UserMetrics(
            self.users[keep],
            self.ks,
            {key: column[keep] for key, column in self.values.items()},
            dict.fromkeys(self.coverage, math.nan),
        )


def user_metrics(
    score_fn: ScoreFn,
    targets: EvalTargets,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    served: ServedAs | None = None,
) -> UserMetrics:
    """Rank the full catalogue for every evaluated user; each user's metrics (see the module docstring)."""
    return user_metrics_many({"model": score_fn}, targets, ks, batch_size, served)["model"]


def user_metrics_many(
    score_fns: Mapping[str, ScoreFn],
    targets: EvalTargets,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    served: ServedAs | None = None,
) -> dict[str, UserMetrics]:
    """:func:`user_metrics` of several scorers over the same users, batch by batch: scorers that share work for
    a batch (two stacks over one candidate block) then do it once per batch."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n_items, users = targets.n_items, targets.users
    k_top = min(ks[-1], n_items)
    discounts = 1.0 / torch.log2(torch.arange(2, k_top + 2, dtype=torch.float64))
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(discounts, 0)])  # ideal[m] = IDCG with m hits

    parts: dict[str, dict[str, list[np.ndarray]]] = {
        name: {f"{n}@{k}": [] for k in ks for n in ("recall", "ndcg", "hit_rate", "cold_recall")} for name in score_fns
    }
    covered = {name: {k: torch.zeros(n_items, dtype=torch.bool) for k in ks} for name in score_fns}
    progress = Progress("evaluate", len(users), every_s=10.0, logger=log)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        n_rel = torch.from_numpy(np.diff(targets.relevant.indptr)[batch]).to(torch.float64)
        n_cold = torch.from_numpy(np.diff(targets.cold_relevant.indptr)[batch]).to(torch.float64)
        for name, score_fn in score_fns.items():
            top_idx, ranked = _ranked_top(score_fn, batch, targets, k_top, served)
            rel_hits = torch.from_numpy(in_rows(targets.relevant, batch, top_idx.numpy())) & ranked
            cold_hits = torch.from_numpy(in_rows(targets.cold_relevant, batch, top_idx.numpy())) & ranked
            out = parts[name]
            for k in ks:
                kk = min(k, k_top)
                hits_k = rel_hits[:, :kk]
                n_hits = hits_k.sum(1).to(torch.float64)
                dcg = (hits_k.to(torch.float64) * discounts[:kk]).sum(1)
                idcg = ideal[torch.clamp(n_rel, max=kk).long()]
                out[f"recall@{k}"].append((n_hits / n_rel).numpy())
                out[f"ndcg@{k}"].append((dcg / idcg).numpy())
                out[f"hit_rate@{k}"].append((n_hits > 0).to(torch.float64).numpy())
                cold_k = cold_hits[:, :kk].sum(1).to(torch.float64)
                out[f"cold_recall@{k}"].append(torch.where(n_cold > 0, cold_k / n_cold, math.nan).numpy())
                covered[name][k][top_idx[:, :kk][ranked[:, :kk]]] = True
        progress.advance(len(batch))

    return {
        name: UserMetrics(
            users=np.asarray(users, dtype=np.int64),
            ks=tuple(ks),
            values={key: np.concatenate(chunks) if chunks else np.zeros(0) for key, chunks in parts[name].items()},
            coverage={f"coverage@{k}": float(covered[name][k].sum()) / n_items if n_items else math.nan for k in ks},
        )
        for name in score_fns
    }


def _ranked_top(
    score_fn: ScoreFn, batch: np.ndarray, targets: EvalTargets, k: int, served: ServedAs | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top ``k`` (item indices, real-item mask): the scorer's own list when it is a
    :class:`TopScorer` that has one holding no training item, else ``torch.topk`` of its masked full scores."""
    if served is None and isinstance(score_fn, TopScorer):
        items = score_fn.top(batch, k)
        if items is not None:
            if items.shape != (len(batch), k) or items.min(initial=0) < 0 or items.max(initial=0) >= targets.n_items:
                raise ValueError(f"top() gave {items.shape} or items outside the catalogue, expected {(len(batch), k)}")
            # A training item would have been masked from the full scores: that batch is ranked in full instead.
            if not in_rows(targets.history, batch, items).any():
                return torch.from_numpy(items.astype(np.int64, copy=False)), torch.ones(items.shape, dtype=torch.bool)
    scores = _masked_scores(score_fn, batch, targets.history, targets.n_items)
    if served is not None:
        return _served_top(scores, k, served)
    top_idx, top_vals, _ = top_k_rows(scores.numpy(), k)
    return torch.from_numpy(top_idx), torch.from_numpy(top_vals > float("-inf"))  # padding: fewer than K scorable


def cold_ranks(
    score_fn: ScoreFn, targets: EvalTargets, cold: np.ndarray, k: int = 50, batch_size: int = 1024
) -> dict[str, float]:
    """Where the relevant cold items rank, which recall alone hides while they sit just below the top K.

    ``median_cold_rank``: the median 1-based rank of each (user, relevant cold item) pair among the items
    the user did not interact with in training (ties counted in the item's favour); ``cold_share@K``: the
    share of the evaluated users' top K slots that hold cold items (``cold``, a bool per item).
    """
    ranks: list[np.ndarray] = []
    cold_slots, slots = 0, 0
    cold_t = torch.from_numpy(np.asarray(cold, dtype=bool))
    for lo in range(0, len(targets.users), batch_size):
        batch = targets.users[lo : lo + batch_size]
        scores = _masked_scores(score_fn, batch, targets.history, targets.n_items)
        rows, cols = _batch_coo(targets.cold_relevant, batch)
        for at in range(0, len(rows), batch_size):  # pairs in chunks: one row of scores per pair
            r, c = rows[at : at + batch_size], cols[at : at + batch_size]
            ranks.append(((scores[r] > scores[r, c].unsqueeze(1)).sum(dim=1) + 1).numpy())
        top = torch.topk(scores, min(k, targets.n_items), dim=1)
        real = torch.isfinite(top.values)
        cold_slots += int((cold_t[top.indices] & real).sum())
        slots += int(real.sum())
    all_ranks = np.concatenate(ranks) if ranks else np.array([])
    return {
        "median_cold_rank": float(np.median(all_ranks)) if len(all_ranks) else math.nan,
        f"cold_share@{k}": cold_slots / slots if slots else math.nan,
    }


def _masked_scores(score_fn: ScoreFn, batch: np.ndarray, history: sp.csr_matrix, n_items: int) -> torch.Tensor:
    raw = torch.as_tensor(score_fn(batch)).detach()
    # Copy unless the scorer says the tensor is new and its own: it may hand back a view (an expanded popularity
    # row) or a buffer it keeps. The copy and NaN's replacement are one pass.
    fresh = isinstance(score_fn, FreshScores | ProductScores) and raw.dtype == torch.float32 and not raw.is_inference()
    scores = torch.nan_to_num(
        raw.to(torch.float32), nan=float("-inf"), posinf=math.inf, neginf=-math.inf, out=raw if fresh else None
    )
    if scores.shape != (len(batch), n_items):
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(len(batch), n_items)}")
    rows, cols = _batch_coo(history, batch)
    scores[rows, cols] = float("-inf")
    return scores


def _served_top(scores: torch.Tensor, k: int, served: ServedAs) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` items of each row's feed under ``served.policy``: (item indices, real-item mask)."""
    policy = dataclasses.replace(served.policy, feed_length=k)
    # Candidates: enough of the best overall for the creator cap to skip some, plus the best fresh ones for the
    # reserved slots (they rarely make the overall top).
    n_slots = int(policy.fresh_slots(k).sum())
    fresh_mask = torch.from_numpy(served.fresh)
    _, top = torch.topk(scores, min(4 * k, scores.shape[1]), dim=1)
    _, top_fresh = torch.topk(scores.masked_fill(~fresh_mask, float("-inf")), min(2 * n_slots + 1, scores.shape[1]), 1)
    n_creators = served.n_creators  # a max over the catalogue: once per batch, not per row
    out = torch.zeros((len(scores), k), dtype=torch.int64)
    ranked = torch.zeros((len(scores), k), dtype=torch.bool)
    for row in range(len(scores)):
        cand = torch.unique(torch.cat([top[row], top_fresh[row]]))
        cand_scores = scores[row, cand]
        scorable = cand_scores > float("-inf")
        cand, cand_scores = cand[scorable], cand_scores[scorable]
        cand = cand[torch.argsort(cand_scores, descending=True, stable=True)].numpy()
        picked = cand[select_eligible(served.creator_codes[cand], n_creators, served.fresh[cand], policy)]
        out[row, : len(picked)] = torch.from_numpy(picked)
        ranked[row, : len(picked)] = True
    return out, ranked


def in_rows(matrix: sp.csr_matrix, batch: np.ndarray, items: np.ndarray) -> np.ndarray:
    """bool, shaped like ``items`` (rows aligned with ``batch``): whether ``matrix[batch[row], items[row, col]]`` is
    stored (False where ``items`` is -1). One compiled pass over the batch's rows
    (:mod:`rec_core.feed.membership_kernel`): no (rows, n_items) matrix at any catalogue size."""
    sub = matrix[np.asarray(batch, dtype=np.int64)]
    return membership(items, np.arange(len(batch), dtype=np.int64), sub.indptr, sub.indices, matrix.shape[1])


def popularity_order(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items most popular first, ties to the lower index, and each item's rank as a float32 score (n for the
    first, 1 for the last), so that equally popular items still keep one fixed order."""
    n_items = len(counts)
    order = np.lexsort((np.arange(n_items), -np.asarray(counts)))
    ranks = np.empty(n_items, dtype=np.float32)
    ranks[order] = np.arange(n_items, 0, -1, dtype=np.float32)
    return order, ranks


def first_not_in(order: np.ndarray, excluded: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray | None:
    """Each user's first ``k`` items of one global ``order`` that their row of ``excluded`` does not hold (int64,
    users x k): the top of a popularity ranking. None when a user has fewer than ``k`` such items."""
    users = np.asarray(users, dtype=np.int64)
    # A user's first k lie within the first k + (items their row holds) of the order.
    depth = min(k + int(np.diff(excluded.indptr)[users].max(initial=0)), len(order))
    head = np.broadcast_to(np.asarray(order, dtype=np.int64)[:depth], (len(users), depth))
    keep = ~in_rows(excluded, users, head)
    if (keep.sum(axis=1) < k).any():
        return None
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept columns first, in the order's order
    return np.take_along_axis(head, first, axis=1)


def _batch_coo(matrix: sp.csr_matrix, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row-within-batch, column) of the non-zeros of ``matrix[batch]``."""
    sub = matrix[batch]
    rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(sub.indptr))
    return torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))
