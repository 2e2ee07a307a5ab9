"""Exact top-k of ``users @ videos.T`` without the whole product: tile by tile, each tile selected from while it is
still in cache.

The batch's candidates wrote every user-batch's scores into a buffer of ``batch x n_videos`` float32 (1 GB at
512 users and 500,000 videos) and then read it all back to select from it: two trips through memory for every
score, more time than the arithmetic at the large scale. Here the product is made in tiles of ``TILE`` videos, and
each tile is scanned against the row's threshold right after its product, so a score is written to cache and
read from it once; only the survivors are kept.

The threshold comes first, from the same sample of columns :mod:`rec_core.feed.top_k_kernel` takes from a row
(its product costs a few thousand columns), with the row's excluded videos set to ``-inf`` there as everywhere.
The result is exact whatever the sample says, by the same rule: the survivors are every score at or above the
threshold, so when at least ``k`` pass, the top ``k`` are among them; a row with fewer (or with more than there is
room for) is made again in full and selected from by :func:`rec_core.feed.top_k_kernel.top_k_rows`. Same order:
best first, ties by the lower index (survivors are kept in index order and radix-sorted, which is stable).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from rec_core.feed.top_k_kernel import (
    SAMPLE_RUN,
    empty_top_k,
    order_keys,
    radix_sort,
    sample_plan,
    scan_row,
    top_k_rows,
)

# Videos per tile: 512 users x 8,192 videos is 16 MB of scores, the fastest of 2,048 / 8,192 / 32,768 at both 50,000
# and 500,000 videos (docs/performance.md, "The product in tiles").
TILE = 8192


@njit(cache=True, nogil=True, parallel=True)
def _thresholds(
    sample: np.ndarray, columns: np.ndarray, indptr: np.ndarray, excluded: np.ndarray, rank: int
) -> np.ndarray:
    """Per row, the value ``rank`` places from the top of its sample (``-inf`` where the sample is too short),
    excluded columns and NaN counted as ``-inf``. ``columns`` (ascending) are the sample's videos; the row's
    exclusions are ``excluded[indptr[r]:indptr[r + 1]]``, ascending."""
    rows, m = sample.shape
    out = np.full(rows, -np.inf, dtype=np.float32)
    for r in prange(rows):
        row = sample[r].copy()
        p, end = indptr[r], indptr[r + 1]
        for c in range(m):
            while p < end and excluded[p] < columns[c]:
                p += 1
            if (p < end and excluded[p] == columns[c]) or row[c] != row[c]:
                row[c] = -np.inf
        if rank < m:
            out[r] = np.partition(row, m - 1 - rank)[m - 1 - rank]
    return out


@njit(cache=True, nogil=True, parallel=True)
def _scan_tile(
    tile: np.ndarray,
    offset: int,
    thresholds: np.ndarray,
    indptr: np.ndarray,
    excluded: np.ndarray,
    cursor: np.ndarray,
    kept_index: np.ndarray,
    kept_value: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Keep, per row, the scores of ``tile`` (videos ``offset..``) at or above the row's threshold, after setting
    its excluded videos to ``-inf``; ``cursor[r]`` is the row's first exclusion not yet reached. A row whose
    survivors outgrow ``kept_index`` counts past its width and stops: it will be made again in full."""
    rows, width = tile.shape
    capacity = kept_index.shape[1]
    for r in prange(rows):
        row = tile[r]
        p, end = cursor[r], indptr[r + 1]
        while p < end and excluded[p] < offset + width:
            row[excluded[p] - offset] = -np.inf
            p += 1
        cursor[r] = p
        threshold, count = thresholds[r], counts[r]
        if count <= capacity and threshold > -np.inf:
            count = scan_row(row, threshold, offset, kept_index[r], kept_value[r], count)
        counts[r] = count


@njit(cache=True, nogil=True, parallel=True)
def _select_kept(
    kept_index: np.ndarray, kept_value: np.ndarray, counts: np.ndarray, k: int, indices: np.ndarray, values: np.ndarray
) -> None:
    """The top ``k`` of each row's survivors (rows with between ``k`` and the width of ``kept_index``)."""
    rows, capacity = kept_index.shape
    for r in prange(rows):
        count = counts[r]
        if not k <= count <= capacity:
            continue
        keys = order_keys(kept_value[r].view(np.int32), count)
        _, order = radix_sort(keys, np.arange(count))  # survivors are in index order: ties stay so
        for c in range(k):
            indices[r, c] = kept_index[r, order[c]]
            values[r, c] = kept_value[r, order[c]]


def product_top_k(
    users: torch.Tensor,
    videos_t: torch.Tensor,
    k: int,
    indptr: np.ndarray,
    excluded: np.ndarray,
    tile: int = TILE,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(indices int64 [rows, k], values float32 [rows, k], rows made again in full) of the top ``k`` of each row of
    ``users @ videos_t`` (float32 [rows, d] and [d, n]), row ``r``'s videos ``excluded[indptr[r]:indptr[r + 1]]``
    (ascending) set to ``-inf`` first; as :func:`rec_core.feed.top_k_kernel.top_k_rows` gives for the whole
    product, ``0 <= k <= n``."""
    rows, n = users.shape[0], videos_t.shape[1]
    indices, values = empty_top_k(rows, n, k)
    if rows == 0 or k == 0:
        return indices, values, 0
    runs, rank, capacity = sample_plan(n, k)
    step, run = n // runs, min(SAMPLE_RUN, n)
    columns = (np.arange(runs)[:, None] * step + np.arange(run)[None, :]).ravel()  # top_k_rows' sample
    with torch.inference_mode():
        if rank < len(columns):
            again = _tiles(users, videos_t, k, indptr, excluded, tile, columns, rank, capacity, indices, values)
        else:  # the sample is the row, or near it (a catalogue of a few hundred videos): every row whole
            again = np.arange(rows)
        if len(again):  # an unlucky sample, or fewer than k videos left: these rows whole, as top_k_rows selects
            scores = (users[torch.from_numpy(again)] @ videos_t).numpy()
            for r, row in enumerate(again.tolist()):
                scores[r, excluded[indptr[row] : indptr[row + 1]]] = -np.inf
            indices[again], values[again], _ = top_k_rows(scores, k)
    return indices, values, len(again)


def _tiles(
    users: torch.Tensor,
    videos_t: torch.Tensor,
    k: int,
    indptr: np.ndarray,
    excluded: np.ndarray,
    tile: int,
    columns: np.ndarray,
    rank: int,
    capacity: int,
    indices: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Fill the rows the tiles can select; returns the others (to be made again whole)."""
    rows, n = users.shape[0], videos_t.shape[1]
    sample = (users @ videos_t[:, torch.from_numpy(columns)]).numpy()
    thresholds = _thresholds(sample, columns, indptr, excluded, rank)
    kept_index = np.empty((rows, capacity), dtype=np.int64)
    kept_value = np.empty((rows, capacity), dtype=np.float32)
    counts = np.zeros(rows, dtype=np.int64)
    cursor = indptr[:-1].copy()
    buffer = torch.empty(rows * min(tile, n), dtype=torch.float32)
    for lo in range(0, n, tile):
        hi = min(lo + tile, n)
        part = torch.mm(users, videos_t[:, lo:hi], out=buffer[: rows * (hi - lo)].view(rows, hi - lo))
        _scan_tile(part.numpy(), lo, thresholds, indptr, excluded, cursor, kept_index, kept_value, counts)
    _select_kept(kept_index, kept_value, counts, k, indices, values)
    return np.flatnonzero((counts < k) | (counts > capacity))
