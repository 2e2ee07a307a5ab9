"""Exact candidate generation: every user against every video, best ``k`` per user, watched videos excluded.

``scores = users @ videos.T`` in batches of users, watched (and own) videos set
to ``-inf`` from a CSR of exclusions, then an exact top-k; the product is made
in tiles of videos, each selected from while it is in cache
(:mod:`rec_core.feed.tiled_top_k`), so memory is bounded by the batch's
survivors, not by ``batch_size x n_videos`` scores.

Why exact matmul and not the Milvus index: at the catalogue sizes of a batch
run (50,000 videos, 64-d) one user-batch matmul is a dense GEMM that runs near
the CPU's peak, and the top-k over it costs about as much as the GEMM; a
Milvus search costs a round trip per query batch plus the index's own scan
(FLAT is the same arithmetic, HNSW is approximate). Exact top-k is therefore
both faster here and exact -- which also keeps feeds deterministic: an
approximate index can return a different neighbour set run to run. Milvus
stays the tool for what it is good at: live lookups in the API for users and
videos the batch has not seen. ``benchmarks/bench_materialize.py`` measures
this stage against the plain matmul + topk bound.

Ties (equal scores) are broken by the lower video index, the k-th place
included, so with videos sorted by id the order never depends on a library's
internals or the thread count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rec_core.arrays import sorted_unique
from rec_core.feed.membership_kernel import in_rows
from rec_core.feed.tiled_top_k import product_top_k
from rec_core.feed.top_k_kernel import top_k_rows


@dataclass(frozen=True, slots=True)
class ExclusionCSR:
    """Per-user sets of excluded video indices (watched, own): row ``u`` is ``indices[indptr[u]:indptr[u+1]]``."""

    indptr: np.ndarray  # int64 [n_users + 1]
    indices: np.ndarray  # int64, sorted and unique within each row

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def row(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def contains(self, users: np.ndarray, videos: np.ndarray, n_videos: int) -> np.ndarray:
        """bool [rows, width]: whether ``videos[r, c]`` is in user ``users[r]``'s row; False where videos is -1."""
        if len(users) == 1:
            # The live path, per page: a binary search in the user's sorted row, nothing catalogue-sized.
            row = self.row(int(users[0]))
            if not len(row):
                return np.zeros(videos.shape, dtype=bool)
            at = np.minimum(np.searchsorted(row, videos), len(row) - 1)
            return row[at] == videos
        # Many rows (the batch): a compiled pass, nothing catalogue-sized per row.
        return in_rows(videos, users, self.indptr, self.indices, n_videos)

    def take(self, users: np.ndarray) -> ExclusionCSR:
        """The rows of ``users``, in that order, as a CSR of ``len(users)`` rows (no re-sort: rows stay as they are)."""
        users = np.asarray(users, dtype=np.int64)
        starts = self.indptr[users]
        counts = self.indptr[users + 1] - starts
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        total = int(indptr[-1])
        at = np.repeat(starts - indptr[:-1], counts) + np.arange(total, dtype=np.int64)
        return ExclusionCSR(indptr, self.indices[at])

    @classmethod
    def from_pairs(cls, users: np.ndarray, videos: np.ndarray, n_users: int) -> ExclusionCSR:
        """Build from aligned (user index, video index) pairs; duplicates are dropped."""
        users = np.asarray(users, dtype=np.int64)
        videos = np.asarray(videos, dtype=np.int64)
        if len(users) != len(videos):
            raise ValueError(f"{len(users)} users for {len(videos)} videos")
        if len(users) and (users.min() < 0 or users.max() >= n_users):
            raise ValueError(f"user index outside 0..{n_users - 1}")
        if len(videos) and videos.min() < 0:
            raise ValueError(f"video index {videos.min()} is negative")
        # One int64 key per pair, sorted: numpy sorts integers with SIMD, a lexsort of two columns does not (a shard's
        # million watches: 7 ms against 170).
        span = int(videos.max()) + 1 if len(videos) else 1
        keys = sorted_unique(users * span + videos)
        users, videos = np.divmod(keys, span)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(indptr, videos)

    @classmethod
    def empty(cls, n_users: int) -> ExclusionCSR:
        return cls(np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))


@dataclass(frozen=True, slots=True)
class CandidateBatch:
    """Top-k of users ``lo..hi-1``; ``indices`` is -1 (and ``scores`` -inf) where fewer than k videos remain."""

    lo: int
    hi: int
    indices: np.ndarray  # int64 [hi - lo, k], best first
    scores: np.ndarray  # float32 [hi - lo, k]
    subsets: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # (indices, scores) per requested subset, same layout


def iter_top_k(
    user_vectors: np.ndarray,
    video_vectors: np.ndarray,
    k: int,
    *,
    exclude: ExclusionCSR | None = None,
    batch_size: int = 512,
    subsets: Sequence[tuple[np.ndarray, int]] = (),
) -> Iterator[CandidateBatch]:
    """Yield exact top-``k`` video indices per user, ``batch_size`` users at a time.

    ``subsets`` asks for extra top-k lists restricted to a subset of videos
    (``(video indices, k)``, e.g. the fresh videos), the same exclusions
    applied: a product over the subset's columns only. Returned indices are
    always into the full ``video_vectors``.
    """
    users = torch.from_numpy(np.ascontiguousarray(user_vectors, dtype=np.float32))
    videos_t = torch.from_numpy(np.ascontiguousarray(video_vectors, dtype=np.float32)).T.contiguous()
    n_users, n_videos = users.shape[0], videos_t.shape[1]
    if users.shape[1] != videos_t.shape[0]:
        raise ValueError(f"user vectors are {users.shape[1]}-d but video vectors {videos_t.shape[0]}-d")
    if exclude is not None and exclude.n_users != n_users:
        raise ValueError(f"exclusions for {exclude.n_users} users, vectors for {n_users}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    k = max(0, min(k, n_videos))
    subset_idx = [np.asarray(idx, dtype=np.int64) for idx, _ in subsets]
    subset_k = [max(0, min(sk, len(idx))) for idx, sk in subsets]
    with torch.inference_mode():
        subset_t = [videos_t[:, torch.from_numpy(idx)].contiguous() for idx in subset_idx]
    subset_place = []  # per subset: each video's column in it, -1 outside
    for idx in subset_idx:
        place = np.full(n_videos, -1, dtype=np.int64)
        place[idx] = np.arange(len(idx))
        subset_place.append(place)
    no_exclusions = np.zeros(0, dtype=np.int64)
    for lo in range(0, n_users, batch_size):
        hi = min(lo + batch_size, n_users)
        if exclude is not None:
            indptr = exclude.indptr[lo : hi + 1] - exclude.indptr[lo]
            excluded = exclude.indices[exclude.indptr[lo] : exclude.indptr[hi]]
        else:
            indptr, excluded = np.zeros(hi - lo + 1, dtype=np.int64), no_exclusions
        # The product in tiles, each selected from while in cache (rec_core.feed.tiled_top_k): the whole batch's
        # scores (1 GB at 500,000 videos) are never written.
        indices, top, _ = product_top_k(users[lo:hi], videos_t, k, indptr, excluded)
        top_i = np.where(np.isneginf(top), -1, indices)
        extra = []
        excluded_row = np.repeat(np.arange(hi - lo), np.diff(indptr))
        for idx, sub_t, sk, place in zip(subset_idx, subset_t, subset_k, subset_place, strict=True):
            with torch.inference_mode():
                sub_scores = (users[lo:hi] @ sub_t).numpy()
            column = place[excluded]  # the batch's exclusions that fall in the subset, by their column there
            inside = column >= 0
            sub_scores[excluded_row[inside], column[inside]] = -np.inf
            sub_i, sub_s = _top_k(sub_scores, sk)
            extra.append((np.where(sub_i >= 0, idx[np.maximum(sub_i, 0)], -1), sub_s))
        yield CandidateBatch(lo, hi, top_i, top, tuple(extra))


def top_k(
    user_vectors: np.ndarray,
    video_vectors: np.ndarray,
    k: int,
    *,
    exclude: ExclusionCSR | None = None,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """All users at once: ``(indices [U, k], scores [U, k])``; see :func:`iter_top_k`."""
    parts = list(iter_top_k(user_vectors, video_vectors, k, exclude=exclude, batch_size=batch_size))
    width = max(0, min(k, len(video_vectors)))
    if not parts:
        return np.zeros((0, width), dtype=np.int64), np.zeros((0, width), dtype=np.float32)
    return np.concatenate([p.indices for p in parts]), np.concatenate([p.scores for p in parts])


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices, values, _ = top_k_rows(scores, k)
    return np.where(np.isneginf(values), -1, indices), values


# Engagement weights of the popularity ("trending") score: a view counts 1, watching it through adds up to 1 more,
# and the deliberate actions count more because they are rarer and say more.
VIEW_WEIGHT, COMPLETION_WEIGHT, LIKE_WEIGHT, COMMENT_WEIGHT, SHARE_WEIGHT = 1.0, 1.0, 2.0, 3.0, 4.0
TRENDING_HALF_LIFE_DAYS = 2.0
TRENDING_WINDOW_DAYS = 14.0


def trending_scores(
    video: np.ndarray,
    ts_ms: np.ndarray,
    completion: np.ndarray,
    liked: np.ndarray,
    commented: np.ndarray,
    shared: np.ndarray,
    *,
    n_videos: int,
    as_of_ms: int,
    half_life_days: float = TRENDING_HALF_LIFE_DAYS,
    window_days: float = TRENDING_WINDOW_DAYS,
) -> np.ndarray:
    """Recent engagement per video, each interaction decayed by its age before ``as_of`` (float64 [n_videos]).

    Interactions at or after ``as_of`` or older than ``window_days`` count nothing.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    age_days = (as_of_ms - ts_ms) / 86_400_000.0
    keep = (age_days > 0) & (age_days <= window_days)
    weight = (
        VIEW_WEIGHT
        + COMPLETION_WEIGHT * np.clip(np.asarray(completion, dtype=np.float64), 0.0, 1.0)
        + LIKE_WEIGHT * np.asarray(liked, dtype=np.float64)
        + COMMENT_WEIGHT * np.asarray(commented, dtype=np.float64)
        + SHARE_WEIGHT * np.asarray(shared, dtype=np.float64)
    )
    decayed = weight[keep] * np.exp2(-age_days[keep] / half_life_days)
    return np.bincount(np.asarray(video, dtype=np.int64)[keep], weights=decayed, minlength=n_videos)


def trending_order(popularity: np.ndarray, created_ms: np.ndarray) -> np.ndarray:
    """Video indices by popularity, then newest first, then index: a total, deterministic order."""
    return np.lexsort((np.arange(len(popularity)), -np.asarray(created_ms, dtype=np.int64), -popularity))
