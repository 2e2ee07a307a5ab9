"""The "because you liked" similarity of each feed row, compiled: per row, the user's recent like closest to the row's
video by cosine (see :func:`rec_core.feed.reasons.explain`).

Both feed paths explain their rows through it. As numpy it gathered every row's video vector into a [users, feed
length, d] array (65 MB per block of 512 users and feeds of 500) and multiplied it with the likes in a batched
matmul: the largest part of explaining a shard. Here each row reads its video's vector and the user's few likes
(at most ``RECENT_LIKES``) in place, and nothing row-sized is built. ``fastmath`` lets the 64-term dot products
vectorise; the sums may differ from a BLAS product's in the last bits, which only a similarity on the threshold
itself would notice, and both paths share this code.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def _closest(
    unit: np.ndarray, row_user: np.ndarray, row_video: np.ndarray, indptr: np.ndarray, liked: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n, d = len(row_video), unit.shape[1]
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        u, v = row_user[i], row_video[i]
        top, top_j = np.float32(-np.inf), -1
        for j in range(indptr[u], indptr[u + 1]):
            s = np.float32(0.0)
            for c in range(d):
                s += unit[v, c] * unit[liked[j], c]
            if top_j < 0 or s > top:  # the first like of the best similarity, as argmax takes it
                top, top_j = s, liked[j]
        if top_j >= 0 and top_j != v:  # a video is never its own reason
            best[i], arg[i] = top, top_j
    return best, arg


def closest_liked(
    unit: np.ndarray, row_user: np.ndarray, row_video: np.ndarray, liked_indptr: np.ndarray, liked: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the best cosine between video ``row_video[i]`` and one of user ``row_user[i]``'s likes
    (``liked[liked_indptr[u]:liked_indptr[u + 1]]``), and that liked video; -inf and -1 where the user has none or
    the best is the row's own video. ``unit``: float32 [V, d], L2-normalised rows."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    row_user = np.ascontiguousarray(row_user, dtype=np.int64)
    row_video = np.ascontiguousarray(row_video, dtype=np.int64)
    liked_indptr = np.ascontiguousarray(liked_indptr, dtype=np.int64)
    liked = np.ascontiguousarray(liked, dtype=np.int64)
    if len(row_user) != len(row_video):
        raise ValueError(f"{len(row_user)} row users for {len(row_video)} row videos")
    if len(row_video) and (row_video.min() < 0 or row_video.max() >= len(unit)):
        raise ValueError(f"row videos outside 0..{len(unit) - 1}")
    if len(row_user) and (row_user.min() < 0 or row_user.max() + 1 >= len(liked_indptr)):
        raise ValueError(f"row users outside the {len(liked_indptr) - 1} users of the likes")
    if (len(liked) and (liked.min() < 0 or liked.max() >= len(unit))) or liked_indptr[-1] > len(liked):
        raise ValueError("liked videos outside the catalogue, or an index past the likes")
    return _closest(unit, row_user, row_video, liked_indptr, liked)
