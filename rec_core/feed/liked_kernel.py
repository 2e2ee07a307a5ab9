"""The "because you liked" similarity, compiled: a feed row's video against the user's recent likes, by cosine
(the LIKED rule of :mod:`rec_core.feed.reasons`, applied in :mod:`rec_core.feed.reasons_kernel`).

As numpy it gathered every row's video vector into a [users, feed length, d] array (65 MB per block of 512 users
and feeds of 500) and multiplied it with the likes in a batched matmul. Here a row reads its video's vector and the
user's few likes (at most ``RECENT_LIKES``) in place, and nothing row-sized is built. Reassociation lets the
64-term dot products vectorise; the sums may differ from a BLAS product's in the last bits, which only a
similarity on the threshold itself would notice, and both feed paths share this code. Only reassociation (and
fused multiply-adds): the whole ``fastmath`` set also promises LLVM there are no infinities or NaNs, and
:func:`best_like` starts from and returns -inf.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def best_like(unit: np.ndarray, video: int, liked: np.ndarray, lo: int, hi: int) -> tuple[np.float32, int]:
    """The best cosine between ``video`` and ``liked[lo:hi]`` (rows of ``unit``, float32 [V, d], L2-normalised),
    and that liked video, the first of equal ones as argmax takes it; (-inf, -1) where there is none or it is
    ``video`` itself (a video is never its own reason)."""
    top, top_j = np.float32(-np.inf), -1
    for j in range(lo, hi):
        s = np.float32(0.0)
        for c in range(unit.shape[1]):
            s += unit[video, c] * unit[liked[j], c]
        if top_j < 0 or s > top:
            top, top_j = s, liked[j]
    if top_j < 0 or top_j == video:
        return np.float32(-np.inf), -1
    return top, top_j
