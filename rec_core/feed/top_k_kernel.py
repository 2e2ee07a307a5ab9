"""Exact top-k of each row of a large score matrix, by a threshold from a sample, compiled.

``torch.topk`` over a row of the full catalogue copies the row as (value, index) pairs and selects in that
copy: at 500,000 videos that is more of the batch's candidate time than the matrix product that made the scores.
Here each row is scanned once against a threshold taken from a sample of the row (evenly spaced runs of
contiguous values, so the sample costs a few cache lines per run), set so that about twice ``k`` values pass it;
only those are selected and sorted. The result is exact whatever the sample says: if fewer than ``k`` values pass
(an unlucky sample, or a row with fewer than ``k`` finite scores), or far more than expected, the whole row is
selected from instead.

Order: best first, equal scores by the lower index, everywhere in the list (the ``k``-th place included), so the
result never depends on the thread count or a library's internals. Each survivor is sorted as one integer key,
its score's bits made order-preserving above its index, which is what makes ties fall to the lower index.
``parallel``: rows are spread over numba's threads; ``nogil`` lets the batch's main thread run the policy meanwhile.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

SAMPLE_RUNS = 64  # contiguous runs the threshold's sample is taken from, evenly spaced over the row
SAMPLE_RUN = 128  # values per run: 8 cache lines
# The threshold lets through the values whose rank in the sample would put them, at the row's full width, within
# SURVIVOR_FACTOR x k, plus SAMPLE_MARGIN more ranks of the sample (so that a small k still has a margin).
SURVIVOR_FACTOR = 2.0
SAMPLE_MARGIN = 16
SCAN_BLOCK = 16  # values scanned as one block: the threshold is compared with their maximum first


@njit(cache=True, inline="always")
def _key(bits: np.int32, index: np.int64) -> np.uint64:
    """An unsigned key that sorts ascending as (score descending, index ascending); ``bits`` are the float32's."""
    b = np.uint32(bits)
    if b == np.uint32(0x80000000):  # -0.0 equals 0.0: the same key, so the tie goes by index
        b = np.uint32(0)
    elif (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN ranks as -inf
        b = np.uint32(0xFF800000)
    ascending = b ^ np.uint32(0x80000000) if (b & np.uint32(0x80000000)) == 0 else ~b
    return (np.uint64(~ascending) << np.uint64(32)) | np.uint64(index)


@njit(cache=True, nogil=True, parallel=True)
def _top_k_rows(
    scores: np.ndarray, bits: np.ndarray, k: int, rank: int, capacity: int, indices: np.ndarray, values: np.ndarray
) -> int:
    """Fill ``indices`` / ``values`` [rows, k] with each row's top ``k``; returns how many rows were selected from in
    full. ``bits`` is ``scores`` viewed as int32; ``rank``: the 0-based rank from the top, in the sample, of the
    threshold."""
    rows, n = scores.shape
    runs = min(SAMPLE_RUNS, max(1, n // SAMPLE_RUN))
    run = min(SAMPLE_RUN, n)
    step = n // runs
    fallbacks = np.zeros(rows, dtype=np.int64)
    for r in prange(rows):
        row = scores[r]
        sample = np.empty(runs * run, dtype=np.float32)
        for c in range(runs):
            sample[c * run : (c + 1) * run] = row[c * step : c * step + run]
        m = len(sample)
        threshold = np.float32(-np.inf)
        if rank < m:
            threshold = np.float32(np.partition(sample, m - 1 - rank)[m - 1 - rank])
        kept = np.empty(capacity + SCAN_BLOCK, dtype=np.int64)
        count = 0
        if threshold > -np.inf:
            # Block by block: a block's maximum vectorises (a fixed trip count, no store), and few blocks hold a
            # value that passes.
            full = n - n % SCAN_BLOCK
            for begin in range(0, full, SCAN_BLOCK):
                top = np.float32(-np.inf)  # not row[begin]: a NaN there would hide the block
                for q in range(SCAN_BLOCK):
                    v = row[begin + q]
                    top = v if v > top else top
                if top >= threshold:
                    for j in range(begin, begin + SCAN_BLOCK):
                        if row[j] >= threshold:
                            kept[count] = j
                            count += 1
                    if count > capacity:
                        break
            for j in range(full, n):
                if row[j] >= threshold and count <= capacity:
                    kept[count] = j
                    count += 1
        if k <= count <= capacity:
            keys = np.empty(count, dtype=np.uint64)
            for i in range(count):
                keys[i] = _key(bits[r, kept[i]], kept[i])
        else:  # too few passed, or too many to keep: the whole row
            fallbacks[r] = 1
            keys = np.empty(n, dtype=np.uint64)
            for j in range(n):
                keys[j] = _key(bits[r, j], j)
        if len(keys) > k:
            keys = np.partition(keys, k - 1)[:k]
        keys.sort()
        for c in range(k):
            j = np.int64(keys[c] & np.uint64(0xFFFFFFFF))
            indices[r, c] = j
            values[r, c] = row[j] if row[j] == row[j] else -np.inf
    return int(fallbacks.sum())


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(indices int64 [rows, k], values float32 [rows, k], rows selected from in full) of a float32 [rows, n]
    matrix; ``0 <= k <= n < 2**32``. -inf scores sort last; a NaN counts as -inf and is returned as -inf."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    rows, n = scores.shape
    if not 0 <= k <= n or n >= 2**32:
        raise ValueError(f"k={k} for rows of {n}")
    indices = np.empty((rows, k), dtype=np.int64)
    values = np.empty((rows, k), dtype=np.float32)
    if rows == 0 or k == 0:
        return indices, values, 0
    sampled = min(SAMPLE_RUNS, max(1, n // SAMPLE_RUN)) * min(SAMPLE_RUN, n)
    rank = int(np.ceil(SURVIVOR_FACTOR * k * sampled / n)) + SAMPLE_MARGIN
    capacity = max(k, int(2 * (rank + 1) * n / sampled))  # twice the survivors expected
    fallbacks = _top_k_rows(scores, scores.view(np.int32), k, rank, capacity, indices, values)
    return indices, values, fallbacks
