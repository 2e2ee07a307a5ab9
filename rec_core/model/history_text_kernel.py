"""The mean caption vector of each row's history in a user-tower batch, compiled (:func:`mean_text`).

As numpy it took four passes over a (batch, text_dim) array, each writing a new one: the rows' sums gathered, the
left-out target subtracted, newcomers zeroed, and a float64 division cast back to float32; 1.0 ms a call at the
default world's batch (1,024 x 384), twice a training step (watched and liked), ~13 s of py-spy's samples of the
default release's 128 s of training. One pass does the same arithmetic in the same precisions (the subtraction in
float32, the division in float64, then float32), so the result is the same to the bit; ``tests/test_history_text.py``
compares it with the numpy formula.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def mean_text(
    text_sum: np.ndarray,
    rows: np.ndarray,
    item_text: np.ndarray,
    exclude: np.ndarray,
    removed: np.ndarray,
    lengths: np.ndarray,
    as_new: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out[r] = (text_sum[rows[r]] - removed[r] * item_text[exclude[r]]) / max(lengths[r], 1)``, zero where
    ``as_new[r]``; an empty ``exclude`` subtracts nothing (no target left out)."""
    subtract = len(exclude) > 0
    for r in range(len(rows)):
        if as_new[r]:
            out[r] = np.float32(0.0)
            continue
        n = np.float64(max(lengths[r], 1))
        total = text_sum[rows[r]]
        if subtract:
            times, left_out = np.float32(removed[r]), item_text[exclude[r]]
            for j in range(len(total)):
                out[r, j] = np.float32(np.float64(total[j] - times * left_out[j]) / n)
        else:
            for j in range(len(total)):
                out[r, j] = np.float32(np.float64(total[j]) / n)
