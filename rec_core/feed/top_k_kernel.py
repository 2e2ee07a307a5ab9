"""Exact top-k of each row of a large score matrix, by a threshold from a sample, compiled.

``torch.topk`` over a row of the full catalogue copies the row as (value, index) pairs and selects in that
copy: at 500,000 videos that is more of the batch's candidate time than the matrix product that made the scores.
Here each row is scanned once against a threshold taken from a sample of the row (evenly spaced runs of
contiguous values, so the sample costs a few cache lines per run), set so that about twice ``k`` values pass it;
only those are selected and sorted. The result is exact whatever the sample says: if fewer than ``k`` values pass
(an unlucky sample, or a row with fewer than ``k`` finite scores), or far more than expected, the whole row is
selected from instead.

Order: best first, equal scores by the lower index, everywhere in the list (the ``k``-th place included), so the
result never depends on the thread count or a library's internals. The survivors are gathered in index order and
sorted by a radix sort of their scores' bits made order-preserving; a radix sort is stable, so equal scores keep
index order. ``parallel``: rows are spread over numba's threads; ``nogil`` lets the batch's main thread run the
policy meanwhile.

The sample is as small as gives the threshold a steady place (:func:`sample_runs`): at 50,000 videos and k =
1,500 (the batch's candidates) a sample of 64 runs cost more to partition than the scan that used it, and a
comparison sort of the survivors' 64-bit keys more than both (docs/performance.md, "The selection's own cost").
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

SAMPLE_RUNS = 64  # at most this many contiguous runs make the threshold's sample, evenly spaced over the row
SAMPLE_RUN = 128  # values per run: 8 cache lines
# The sample holds enough runs for the threshold to sit about this many places from its top (when SAMPLE_RUNS
# allow): fewer and the survivors' count swings from row to row; more and partitioning the sample costs more than
# the survivors it saves.
TARGET_RANK = 64
RADIX_BITS = 11  # three passes sort 32-bit keys; 2,048 counters stay in L1
# The threshold lets through the values whose rank in the sample would put them, at the row's full width, within
# SURVIVOR_FACTOR x k, plus SAMPLE_MARGIN more ranks of the sample (so that a small k still has a margin).
SURVIVOR_FACTOR = 2.0
SAMPLE_MARGIN = 16
SCAN_BLOCK = 16  # values scanned as one block: the threshold is compared with their maximum first


@njit(cache=True, inline="always")
def order_key(bits: np.int32) -> np.uint32:
    """An unsigned key that sorts ascending as the score descending; ``bits`` are the float32's."""
    b = np.uint32(bits)
    if b == np.uint32(0x80000000):  # -0.0 equals 0.0: the same key, so the tie goes by index
        b = np.uint32(0)
    elif (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN ranks as -inf
        b = np.uint32(0xFF800000)
    ascending = b ^ np.uint32(0x80000000) if (b & np.uint32(0x80000000)) == 0 else ~b
    return ~ascending


@njit(cache=True, inline="always")
def order_keys(bits: np.ndarray, count: int) -> np.ndarray:
    """:func:`order_key` of the first ``count`` of ``bits`` (float32 values viewed as int32)."""
    keys = np.empty(count, dtype=np.uint32)
    for i in range(count):
        keys[i] = order_key(bits[i])
    return keys


@njit(cache=True, inline="always")
def radix_sort(keys: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` (uint32) ascending with their ``items``, equal keys in their given order (LSD radix: stable)."""
    count = len(keys)
    spare_keys, spare_items = np.empty_like(keys), np.empty_like(items)
    counts = np.empty(1 << RADIX_BITS, dtype=np.int64)
    mask = np.uint32((1 << RADIX_BITS) - 1)
    for p in range((32 + RADIX_BITS - 1) // RADIX_BITS):
        shift = np.uint32(p * RADIX_BITS)
        counts[:] = 0
        for i in range(count):
            counts[(keys[i] >> shift) & mask] += 1
        total = 0
        for b in range(len(counts)):
            c = counts[b]
            counts[b] = total
            total += c
        for i in range(count):
            d = (keys[i] >> shift) & mask
            spare_keys[counts[d]] = keys[i]
            spare_items[counts[d]] = items[i]
            counts[d] += 1
        keys, spare_keys = spare_keys, keys
        items, spare_items = spare_items, items
    return keys, items


@njit(cache=True, inline="always")
def scan_row(
    row: np.ndarray, threshold: np.float32, offset: int, kept_index: np.ndarray, kept_value: np.ndarray, count: int
) -> int:
    """Append ``(offset + j, row[j])`` for each ``row[j] >= threshold`` to ``kept_index`` / ``kept_value`` from
    ``count`` on; returns the new count, which passes their length (and the scan stops) once they are full."""
    capacity, n = len(kept_index), len(row)
    full = n - n % SCAN_BLOCK
    for begin in range(0, full, SCAN_BLOCK):
        top = np.float32(-np.inf)  # a block's maximum first (not row[begin]: a NaN there would hide the block)
        for q in range(SCAN_BLOCK):  # a fixed trip count, no store: it vectorises, and few blocks hold a value
            v = row[begin + q]
            top = v if v > top else top
        if top >= threshold:
            for j in range(begin, begin + SCAN_BLOCK):
                if row[j] >= threshold:
                    if count < capacity:
                        kept_index[count] = offset + j
                        kept_value[count] = row[j]
                    count += 1
            if count > capacity:
                return count
    for j in range(full, n):
        if row[j] >= threshold:
            if count < capacity:
                kept_index[count] = offset + j
                kept_value[count] = row[j]
            count += 1
    return count


@njit(cache=True, nogil=True, parallel=True)
def _top_k_rows(
    scores: np.ndarray,
    bits: np.ndarray,
    k: int,
    runs: int,
    rank: int,
    capacity: int,
    indices: np.ndarray,
    values: np.ndarray,
) -> int:
    """Fill ``indices`` / ``values`` [rows, k] with each row's top ``k``; returns how many rows were selected from in
    full. ``bits`` is ``scores`` viewed as int32; ``rank``: the 0-based rank from the top, in the sample, of the
    threshold; ``runs``: of the sample (:func:`sample_runs`)."""
    rows, n = scores.shape
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
        kept = np.empty(capacity, dtype=np.int64)
        kept_value = np.empty(capacity, dtype=np.float32)
        count = scan_row(row, threshold, 0, kept, kept_value, 0) if threshold > -np.inf else 0
        if k <= count <= capacity:
            keys = order_keys(kept_value.view(np.int32), count)  # the survivors' own values, read in order
        else:  # too few passed, or too many to keep: the whole row
            fallbacks[r] = 1
            kept = np.arange(n)
            count = n
            keys = order_keys(bits[r], n)
        _, order = radix_sort(keys, kept[:count])  # kept is in index order: ties stay so
        for c in range(k):
            j = order[c]
            indices[r, c] = j
            values[r, c] = row[j] if row[j] == row[j] else -np.inf
    return int(fallbacks.sum())


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(indices int64 [rows, k], values float32 [rows, k], rows selected from in full) of a float32 [rows, n]
    matrix; ``0 <= k <= n < 2**32``. -inf scores sort last; a NaN counts as -inf and is returned as -inf."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    rows, n = scores.shape
    indices, values = empty_top_k(rows, n, k)
    if rows == 0 or k == 0:
        return indices, values, 0
    runs, rank, capacity = sample_plan(n, k)
    fallbacks = _top_k_rows(scores, scores.view(np.int32), k, runs, rank, capacity, indices, values)
    return indices, values, fallbacks


def empty_top_k(rows: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (indices, values) arrays of a top ``k`` of ``rows`` rows of ``n``, unfilled; refuses what cannot be
    selected (``0 <= k <= n < 2**32``)."""
    if not 0 <= k <= n or n >= 2**32:
        raise ValueError(f"k={k} for rows of {n}")
    return np.empty((rows, k), dtype=np.int64), np.empty((rows, k), dtype=np.float32)


def sample_plan(n: int, k: int) -> tuple[int, int, int]:
    """For a top ``k`` of rows of ``n``: the sample's runs (:func:`sample_runs`), the threshold's rank from the top
    of the sample (0-based), and room for twice the survivors expected."""
    runs = sample_runs(n, k)
    sampled = runs * min(SAMPLE_RUN, n)
    rank = int(np.ceil(SURVIVOR_FACTOR * k * sampled / n)) + SAMPLE_MARGIN
    return runs, rank, max(k, int(2 * (rank + 1) * n / sampled))


def sample_runs(n: int, k: int) -> int:
    """Runs of ``SAMPLE_RUN`` values in the threshold's sample of a row of ``n`` for a top ``k``: enough for the
    threshold to sit about ``TARGET_RANK`` places from the sample's top, at most ``SAMPLE_RUNS`` and the row."""
    wanted = int(np.ceil(TARGET_RANK * n / (SURVIVOR_FACTOR * max(k, 1) * SAMPLE_RUN)))
    return max(1, min(wanted, SAMPLE_RUNS, n // SAMPLE_RUN))
