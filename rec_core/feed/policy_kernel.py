"""The feed policy's greedy pass, compiled: a block of users' feeds in one call (see :mod:`rec_core.feed.policy`).

Each slot takes the best (lowest-position) unused candidate of its stream whose creator is under the cap: the fresh
candidates for a fresh slot (then everyone, if none is takeable), everyone otherwise; a feed ends when no candidate
is takeable. A candidate the cap blocks waits in its creator's queue (a linked list over positions) instead of being
rescanned, and a stream looks at its queues only after a waiting creator's count dropped: while that has not
happened every waiting creator is still at the cap, so the pointer's next candidate is the best takeable one.

numba, because the pass is sequential per user (each pick changes what the next may take) and the batch runs it for
every user: in Python it cost about as much per user as the matmul and top-k that produce the candidates.
The hot path (the next candidate at a stream's pointer) is written inline in the loop, not in a helper: a numba
call that passes arrays counts references to each of them, and with a helper per pick that bookkeeping cost three
times the whole selection (57 against 20 us per user of 3,150 candidates and a feed of 500). The two streams' state
sits in arrays indexed by stream, so that path is written once for both.
``nogil``: the batch selects in its main thread while helper threads score the next blocks. ``cache``: the
compiled code is kept beside this file (or in numba's user cache), so a process pays the compilation once per
machine, not per start.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FRESH, REGULAR = 0, 1  # the streams: fresh candidates only (for a fresh slot), and every candidate


@njit(cache=True, nogil=True)
def _best_waiting(
    s: int,
    head: np.ndarray,
    tail: np.ndarray,
    nxt: np.ndarray,
    waiting: np.ndarray,
    n_waiting: np.ndarray,
    counts: np.ndarray,
    cap: int,
    used: np.ndarray,
) -> int:
    """Pop stream ``s``'s best waiting candidate whose creator is under the cap: its position, or -1.

    Used candidates are dropped from the queues' fronts on the way, and creators whose queue empties leave the list.
    Called only after a waiting creator's count dropped, so not on every pick.
    """
    best, best_c = -1, -1
    k = 0
    while k < n_waiting[s]:
        c = waiting[s, k]
        h = head[s, c]
        while h >= 0 and used[h]:
            h = nxt[s, h]
        head[s, c] = h
        if h < 0:
            tail[s, c] = -1
            n_waiting[s] -= 1
            waiting[s, k] = waiting[s, n_waiting[s]]
            continue
        if counts[c] < cap and (best < 0 or h < best):
            best, best_c = h, c
        k += 1
    if best >= 0:
        head[s, best_c] = nxt[s, best]
        if head[s, best_c] < 0:
            tail[s, best_c] = -1
            for k in range(n_waiting[s]):
                if waiting[s, k] == best_c:
                    n_waiting[s] -= 1
                    waiting[s, k] = waiting[s, n_waiting[s]]
                    break
    return best


@njit(cache=True, nogil=True)
def greedy_block(
    creator: np.ndarray,
    keep: np.ndarray,
    fresh: np.ndarray,
    prior: np.ndarray,
    slots: np.ndarray,
    cap: int,
    span: int,
    n_creators: int,
    out: np.ndarray,
    lengths: np.ndarray,
) -> int:
    """Fill ``out[r, :lengths[r]]`` with row ``r``'s feed: column positions among those ``keep`` marks, in order.

    ``creator`` int64 [rows, width] dense codes below ``n_creators``; ``keep`` and ``fresh`` bool, same shape;
    ``prior`` int64 [rows, m], m <= span: the creator codes of the m items served just before the feed, oldest
    first (-1: none), which count in its first windows (a live page continuing a walk); m = 0 for a feed from the
    top. ``slots`` bool [feed length]: the fresh slots; ``cap`` items of one creator in any ``span + 1`` consecutive.
    Returns -1, or the first row with a kept or prior code outside ``0..n_creators-1``, checked as the row is read
    and before anything is indexed by it (the rows before it are filled, it and those after it are not).
    """
    rows, width = creator.shape
    m = prior.shape[1]
    feed_length = out.shape[1]
    # Scratch, per block: per candidate (compact over a row's kept columns) and per creator code, per stream where
    # the streams differ. What a row touches is reset after it, so a block costs O(candidates), not
    # O(rows x creators).
    column = np.empty(width, dtype=np.int64)
    cre = np.empty(width, dtype=np.int64)
    stream = np.empty((2, width), dtype=np.int64)  # positions in rank order: fresh ones; all (the identity)
    stream[REGULAR] = np.arange(width)
    used = np.zeros(width, dtype=np.bool_)
    picks = np.empty(feed_length, dtype=np.int64)
    counts = np.zeros(n_creators, dtype=np.int64)
    # A candidate the cap blocks waits in its creator's queue of its stream: a linked list over positions (head,
    # tail per creator, nxt per position), with the creators that have one listed in ``waiting``.
    head = np.full((2, n_creators), -1, dtype=np.int64)
    tail = np.full((2, n_creators), -1, dtype=np.int64)
    nxt = np.empty((2, width), dtype=np.int64)
    waiting = np.empty((2, width), dtype=np.int64)
    n_stream = np.zeros(2, dtype=np.int64)
    ptr = np.zeros(2, dtype=np.int64)
    n_waiting = np.zeros(2, dtype=np.int64)
    free = np.zeros(2, dtype=np.bool_)  # a waiting creator of the stream may be under the cap again
    for r in range(rows):
        n = 0
        n_fresh = 0
        for j in range(width):
            if keep[r, j]:
                if creator[r, j] < 0 or creator[r, j] >= n_creators:
                    return r
                column[n] = j
                cre[n] = creator[r, j]
                if fresh[r, j]:
                    stream[FRESH, n_fresh] = n
                    n_fresh += 1
                n += 1
        n_stream[FRESH], n_stream[REGULAR] = n_fresh, n
        for k in range(m):
            c = prior[r, k]
            if c >= n_creators:
                return r
            if c >= 0:
                counts[c] += 1
        ptr[:] = 0
        n_waiting[:] = 0
        free[:] = False
        length = 0
        for i in range(min(feed_length, n)):
            p = -1
            # A fresh slot takes the fresh stream's best takeable candidate, then everyone's if it has none.
            for s in range(FRESH if slots[i] else REGULAR, 2):
                if free[s]:
                    p = _best_waiting(s, head, tail, nxt, waiting, n_waiting, counts, cap, used)
                    free[s] = p >= 0
                # Else the next at the pointer; waiting candidates all rank above it, so none is better.
                while p < 0 and ptr[s] < n_stream[s]:
                    q = stream[s, ptr[s]]
                    ptr[s] += 1
                    if used[q]:
                        continue
                    c = cre[q]
                    if counts[c] < cap:
                        p = q
                        break
                    nxt[s, q] = -1  # blocked: queue it behind its creator's waiting candidates
                    if head[s, c] < 0:
                        head[s, c] = q
                        waiting[s, n_waiting[s]] = c
                        n_waiting[s] += 1
                    else:
                        nxt[s, tail[s, c]] = q
                    tail[s, c] = q
                if p >= 0:
                    break
            if p < 0:
                break  # only blocked or no candidates left: end the feed rather than break the cap
            used[p] = True
            picks[length] = p
            length += 1
            counts[cre[p]] += 1
            # Counts cover the last span items, the prior's first: the next pick completes a window of span + 1.
            c = -1
            if i >= span:
                c = cre[picks[i - span]]
            elif i - span + m >= 0:
                c = prior[r, i - span + m]
            if c >= 0:
                counts[c] -= 1
                for s in range(2):
                    if head[s, c] >= 0:
                        free[s] = True
        for k in range(length):
            out[r, k] = column[picks[k]]
        lengths[r] = length
        for k in range(m):
            if prior[r, k] >= 0:
                counts[prior[r, k]] = 0
        for j in range(n):
            c = cre[j]
            counts[c] = 0
            head[0, c] = -1
            head[1, c] = -1
            tail[0, c] = -1
            tail[1, c] = -1
            used[j] = False
    return -1
