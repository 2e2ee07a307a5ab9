"""Every rule of :func:`rec_core.feed.reasons.explain` for a feed row in one compiled pass.

As array operations the rules built a dozen row-sized arrays per block (the creators, two bitmaps of [users,
catalogue] bits, the rows' tags against each user's tags, a mask per rule) and wrote the kinds once per rule: about
200 ns a row, 5 M rows a default shard. Here each row reads what it needs in place and takes the first rule that
holds. A user's follows and the likes of the creators they follow are found by binary search in that user's part
of the sorted keys, which is looked up once per run of rows of one user (feed rows come grouped by user).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rec_core.feed.liked_kernel import best_like

# The kinds, as rec_core.feed.reasons.Reason numbers them (a test holds the two together).
NEW_FOLLOWED, NEW_TAG, NEW, FOLLOWED, LIKED, FOLLOWED_POPULAR, TAG, POPULAR, FOR_YOU = range(9)


@njit(cache=True, inline="always")
def _holds(keys: np.ndarray, lo: int, hi: int, key: int) -> bool:
    at = lo + np.searchsorted(keys[lo:hi], key)
    return at < hi and keys[at] == key


@njit(cache=True, inline="always")
def _engaged_tag(
    video_tags: np.ndarray, strong: np.ndarray, top_tags: np.ndarray, v: int, u: int, strong_only: bool
) -> int:
    """Video ``v``'s first tag among user ``u``'s top tags (with ``strong_only``, its first such tag it is strong
    in); -1 where none."""
    for s in range(video_tags.shape[1]):
        tag = video_tags[v, s]
        if tag < 0 or (strong_only and not strong[v, s]):
            continue
        for q in range(top_tags.shape[1]):
            if top_tags[u, q] == tag:
                return tag
    return -1


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})  # as best_like: no no-inf / no-NaN promise
def explain_rows(
    row_user: np.ndarray,
    row_video: np.ndarray,
    fresh_slot: np.ndarray,
    creator_codes: np.ndarray,
    n_creators: int,
    popular: np.ndarray,
    video_tags: np.ndarray,
    strong: np.ndarray,
    unit: np.ndarray,
    like_threshold: float,
    follow_keys: np.ndarray,
    followed_like_keys: np.ndarray,
    liked_indptr: np.ndarray,
    liked: np.ndarray,
    top_tags: np.ndarray,
    has_history: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(kind int8, argument int64) of each row; the arguments as :func:`rec_core.feed.reasons.explain` gives them."""
    n, n_videos = len(row_video), len(creator_codes)
    kinds = np.empty(n, dtype=np.int8)
    args = np.zeros(n, dtype=np.int64)
    last_user, follows, follows_end, likes, likes_end = -1, 0, 0, 0, 0
    for i in range(n):
        u, v, fresh = row_user[i], row_video[i], fresh_slot[i]
        if u != last_user:  # this user's keys: user * width + column, sorted
            last_user = u
            follows = np.searchsorted(follow_keys, u * n_creators)
            follows_end = np.searchsorted(follow_keys, (u + 1) * n_creators)
            likes = np.searchsorted(followed_like_keys, u * n_videos)
            likes_end = np.searchsorted(followed_like_keys, (u + 1) * n_videos)
        creator = creator_codes[v]
        followed = _holds(follow_keys, follows, follows_end, u * n_creators + creator)
        if fresh and followed:
            kinds[i], args[i] = NEW_FOLLOWED, creator
            continue
        if fresh:
            mine = _engaged_tag(video_tags, strong, top_tags, v, u, False)
            new_tag = mine if mine >= 0 else (video_tags[v, 0] if video_tags.shape[1] else -1)
            if new_tag >= 0:
                kinds[i], args[i] = NEW_TAG, new_tag
            else:
                kinds[i] = NEW
            continue
        if followed:
            kinds[i], args[i] = FOLLOWED, creator
            continue
        similarity, like = best_like(unit, v, liked, liked_indptr[u], liked_indptr[u + 1])
        if like >= 0 and similarity >= like_threshold:
            kinds[i], args[i] = LIKED, like
        elif _holds(followed_like_keys, likes, likes_end, u * n_videos + v):
            kinds[i] = FOLLOWED_POPULAR
        else:
            # Looked up only by the rows that reach this rule, not by every row.
            tag = _engaged_tag(video_tags, strong, top_tags, v, u, True)
            if tag >= 0:
                kinds[i], args[i] = TAG, tag
            elif popular[v] or not has_history[u]:
                kinds[i] = POPULAR
            else:
                kinds[i] = FOR_YOU
    return kinds, args
