"""Row-wise set membership over a block of candidate lists, compiled: which cells a row's set holds, and which
cells are a row's first sight of a video outside its set.

The batch's filters ask this of 512 rows at a time. As flat lookups into a rows x catalogue bitmap it cost a
bitmap per block: 512 x 495,000 is 253 MB of bytes to map and zero, or a bit-packed 31 MB built with a scatter,
for a block that holds about a million cells. Here one array of a row number per video (2 MB at that catalogue,
so it stays in cache) is stamped with each row's set in turn, and each cell reads its video's stamp; nothing is
ever cleared, because a stamp from an earlier row does not equal this row's number.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def in_rows(video: np.ndarray, users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_videos: int) -> np.ndarray:
    """bool [rows, width]: whether ``video[r, c]`` is in row ``users[r]`` of the CSR (``indptr``, ``indices``);
    False where ``video`` is -1."""
    return _membership(*_checked(video, users, indptr, indices, n_videos), False)


def first_outside_rows(
    video: np.ndarray, users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_videos: int
) -> np.ndarray:
    """bool [rows, width]: True at a row's first occurrence of a video that row ``users[r]`` of the CSR does not
    hold; False at a repeat, at a video the row holds, and where ``video`` is -1."""
    return _membership(*_checked(video, users, indptr, indices, n_videos), True)


def first_in_rows(video: np.ndarray) -> np.ndarray:
    """bool [rows, width]: True at a row's first occurrence of each video; False at a repeat and where ``video`` is
    -1. One row (a live page) is sorted in numpy: nothing catalogue-sized, nothing compiled."""
    video = np.asarray(video, dtype=np.int64)
    if len(video) != 1:
        n_videos = int(video.max(initial=-1)) + 1
        return first_outside_rows(video, np.zeros(len(video), dtype=np.int64), _ONE_EMPTY_ROW, _NONE, n_videos)
    out = np.zeros(video.shape, dtype=bool)
    _, first = np.unique(video[0], return_index=True)
    out[0, first] = True
    out &= video >= 0
    return out


_ONE_EMPTY_ROW, _NONE = np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64)  # a CSR that holds nothing


def _checked(
    video: np.ndarray, users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_videos: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The kernels' arguments, refused where a compiled loop would read or write outside its arrays."""
    video = np.ascontiguousarray(video, dtype=np.int64)
    users = np.ascontiguousarray(users, dtype=np.int64)
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    if video.ndim != 2 or len(users) != len(video):
        raise ValueError(f"{len(users)} users for a block of shape {video.shape}")
    if video.size and video.max() >= n_videos:
        raise ValueError(f"video code {video.max()} outside a catalogue of {n_videos}")
    if len(users) and (users.min() < 0 or users.max() + 1 >= len(indptr)):
        raise ValueError(f"user rows outside a CSR of {len(indptr) - 1} rows")
    starts, ends = indptr[users], indptr[users + 1]
    if len(users) and (starts.min() < 0 or (ends < starts).any() or ends.max() > len(indices)):
        raise ValueError(f"a CSR row of users {users.tolist()[:5]}... lies outside its {len(indices)} indices")
    return video, users, indptr, indices, n_videos


@njit(cache=True, nogil=True)
def _membership(video, users, indptr, indices, n_videos, first_outside):
    rows, width = video.shape
    stamp = np.full(n_videos, -1, dtype=np.int32)
    out = np.zeros((rows, width), dtype=np.bool_)
    for r in range(rows):
        u = users[r]
        for j in range(indptr[u], indptr[u + 1]):
            if 0 <= indices[j] < n_videos:
                stamp[indices[j]] = r
        for c in range(width):
            v = video[r, c]
            if v < 0:
                continue
            if not first_outside:
                out[r, c] = stamp[v] == r
            elif stamp[v] != r:  # a first sight: stamped, so a repeat further on reads it
                stamp[v] = r
                out[r, c] = True
    return out
