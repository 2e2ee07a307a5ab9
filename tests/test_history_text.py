"""A user-tower batch's history text (rec_core.model.features._pool_rows, its mean by the compiled
rec_core.model.history_text_kernel.mean_text) is the numpy formula it replaced, to the bit: targets left out,
newcomers emptied, histories that hold the target twice or not at all, read-only caption text as a worker maps it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rec_core.model.features import Catalogue, _pool_rows


def _numpy_mean(
    matrix: sp.csr_matrix,
    text_sum: np.ndarray,
    rows: np.ndarray,
    text: np.ndarray,
    exclude: np.ndarray | None,
    as_new: np.ndarray | None,
) -> np.ndarray:
    """The four passes as numpy made them before the kernel (features.py at 198cfe0)."""
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    positions = np.concatenate([matrix.indices[a:b] for a, b in zip(starts, ends, strict=True)]).astype(np.int64)
    out = text_sum[rows]
    if exclude is not None and len(positions):
        keep = positions != np.repeat(exclude, lengths)
        owner = np.repeat(np.arange(len(rows)), lengths)
        removed = np.bincount(owner[~keep], minlength=len(rows))
        lengths = lengths - removed
        out = out - removed[:, None].astype(np.float32) * text[exclude]
    if as_new is not None and as_new.any():
        lengths = np.where(as_new, 0, lengths)
        out = np.where(as_new[:, None], 0.0, out)
    return (out / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def _catalogue(text: np.ndarray) -> Catalogue:
    n = len(text)
    return Catalogue(
        video_ids=np.array([f"v{i}" for i in range(n)], dtype=object),
        creator_ids=np.array(["c"] * n, dtype=object),
        text=text,
        duration_s=None,
        item_idx=np.arange(n, dtype=np.int64) + 1,
        creator_idx=None,
        hashtag_idx=None,
        hashtag_offsets=None,
        dense=np.zeros((n, 1), dtype=np.float32),
        created_ms=np.zeros(n, dtype=np.int64),
        as_of_ms=0,
    )


@pytest.mark.parametrize("read_only", [False, True])
def test_history_text_is_the_numpy_formula_to_the_bit(read_only: bool) -> None:
    rng = np.random.default_rng(6)
    n_users, n_items, dim = 300, 2_000, 24
    text = rng.standard_normal((n_items, dim)).astype(np.float32)
    text[5] = -0.0  # a negative zero times a zero count is -0.0: subtracted, it turns a -0.0 sum into +0.0
    # Rows of the history matrix by hand, so that some hold an item twice (its count left out is then 2).
    lengths = rng.integers(0, 40, n_users)
    indices = rng.integers(0, n_items, int(lengths.sum()))
    indices[:50] = 5
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    for r in range(0, n_users, 7):
        if lengths[r] >= 2:
            indices[indptr[r] + 1] = indices[indptr[r]]
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n_users, n_items))
    text_sum = np.asarray(matrix @ text, dtype=np.float32)
    text_sum[:10] = -0.0
    if read_only:
        text.setflags(write=False)
    catalogue = _catalogue(text)
    rows = rng.integers(0, n_users, 512)
    first = np.where(lengths[rows] > 0, indices[np.minimum(indptr[rows], len(indices) - 1)], 5)
    exclude = np.where(rng.random(512) < 0.7, first, rng.integers(0, n_items, 512)).astype(np.int64)
    as_new = rng.random(512) < 0.2
    for ex, new in [(None, None), (exclude, None), (None, as_new), (exclude, as_new), (exclude, np.zeros(512, bool))]:
        _, _, got = _pool_rows(matrix, text_sum, rows, catalogue, ex, new)
        want = _numpy_mean(matrix, text_sum, rows, text, ex, new)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.int32), want.view(np.int32))
