"""The feed policy's greedy pass, compiled: a block of users' feeds in one call (see :mod:`rec_core.feed.policy`).

Each slot takes the best (lowest-position) unused candidate of its stream whose creator is under the cap: the fresh
candidates for a fresh slot (then everyone, if none is takeable), everyone otherwise; a feed ends when no candidate
is takeable. A candidate the cap blocks waits in its creator's queue (a linked list over positions) instead of being
rescanned, and a stream looks at its queues only after a waiting creator's count dropped: while that has not
happened every waiting creator is still at the cap, so the pointer's next candidate is the best takeable one.

numba, because the pass is sequential per user (each pick changes what the next may take) and the batch runs it for
every user: in Python it cost about as much per user as the matmul and top-k that produce the candidates.
``nogil``: the batch selects in its main thread while helper threads score the next blocks. ``cache``: the
compiled code is kept beside this file (or in numba's user cache), so a process pays the compilation once per
machine, not per start.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _push(
    head: np.ndarray, tail: np.ndarray, nxt: np.ndarray, waiting: np.ndarray, n_waiting: int, c: int, q: int
) -> int:
    """Queue position ``q`` behind creator ``c``'s waiting candidates; returns the new number of waiting creators."""
    nxt[q] = -1
    if head[c] < 0:
        head[c] = q
        tail[c] = q
        waiting[n_waiting] = c
        return n_waiting + 1
    nxt[tail[c]] = q
    tail[c] = q
    return n_waiting


@njit(cache=True, nogil=True)
def _best_waiting(
    head: np.ndarray,
    tail: np.ndarray,
    nxt: np.ndarray,
    waiting: np.ndarray,
    n_waiting: int,
    counts: np.ndarray,
    cap: int,
    used: np.ndarray,
) -> tuple[int, int]:
    """Pop the best waiting candidate whose creator is under the cap: (its position or -1, waiting creators left).

    Used candidates are dropped from the queues' fronts on the way, and creators whose queue empties leave the list.
    """
    best, best_c = -1, -1
    k = 0
    while k < n_waiting:
        c = waiting[k]
        h = head[c]
        while h >= 0 and used[h]:
            h = nxt[h]
        head[c] = h
        if h < 0:
            tail[c] = -1
            n_waiting -= 1
            waiting[k] = waiting[n_waiting]
            continue
        if counts[c] < cap and (best < 0 or h < best):
            best, best_c = h, c
        k += 1
    if best >= 0:
        head[best_c] = nxt[best]
        if head[best_c] < 0:
            tail[best_c] = -1
            for k in range(n_waiting):
                if waiting[k] == best_c:
                    n_waiting -= 1
                    waiting[k] = waiting[n_waiting]
                    break
    return best, n_waiting


@njit(cache=True, nogil=True)
def _take(
    stream: np.ndarray,
    n_stream: int,
    ptr: int,
    free: bool,
    head: np.ndarray,
    tail: np.ndarray,
    nxt: np.ndarray,
    waiting: np.ndarray,
    n_waiting: int,
    cre: np.ndarray,
    counts: np.ndarray,
    cap: int,
    used: np.ndarray,
) -> tuple[int, int, bool, int]:
    """The best takeable candidate of one stream (positions ``stream[:n_stream]``, in rank order) or -1:
    a waiting one whose creator was freed (looked for only when ``free``), else the next at the pointer; candidates
    the cap blocks on the way join their creator's queue. Returns (position, pointer, free, waiting creators)."""
    p = -1
    if free:
        p, n_waiting = _best_waiting(head, tail, nxt, waiting, n_waiting, counts, cap, used)
        free = p >= 0
    while p < 0 and ptr < n_stream:
        q = stream[ptr]
        ptr += 1
        if used[q]:
            continue
        if counts[cre[q]] < cap:
            p = q
        else:
            n_waiting = _push(head, tail, nxt, waiting, n_waiting, cre[q], q)
    return p, ptr, free, n_waiting


@njit(cache=True, nogil=True)
def greedy_block(
    creator: np.ndarray,
    keep: np.ndarray,
    fresh: np.ndarray,
    slots: np.ndarray,
    cap: int,
    span: int,
    n_creators: int,
    out: np.ndarray,
    lengths: np.ndarray,
) -> None:
    """Fill ``out[r, :lengths[r]]`` with row ``r``'s feed: column positions among those ``keep`` marks, in order.

    ``creator`` int64 [rows, width] dense codes below ``n_creators``; ``keep`` and ``fresh`` bool, same shape;
    ``slots`` bool [feed length]: the fresh slots; ``cap`` items of one creator in any ``span + 1`` consecutive.
    """
    rows, width = creator.shape
    feed_length = out.shape[1]
    # Scratch, per block: per candidate (compact over a row's kept columns) and per creator code. What a row touches
    # is reset after it, so a block costs O(candidates), not O(rows x creators).
    column = np.empty(width, dtype=np.int64)
    cre = np.empty(width, dtype=np.int64)
    fresh_pos = np.empty(width, dtype=np.int64)
    everyone = np.arange(width, dtype=np.int64)  # the regular stream: every kept candidate, in rank order
    used = np.zeros(width, dtype=np.bool_)
    nxt_reg = np.empty(width, dtype=np.int64)
    nxt_fr = np.empty(width, dtype=np.int64)
    wait_reg = np.empty(width, dtype=np.int64)
    wait_fr = np.empty(width, dtype=np.int64)
    picks = np.empty(feed_length, dtype=np.int64)
    counts = np.zeros(n_creators, dtype=np.int64)
    head_reg = np.full(n_creators, -1, dtype=np.int64)
    tail_reg = np.full(n_creators, -1, dtype=np.int64)
    head_fr = np.full(n_creators, -1, dtype=np.int64)
    tail_fr = np.full(n_creators, -1, dtype=np.int64)
    for r in range(rows):
        n = 0
        n_fresh = 0
        for j in range(width):
            if keep[r, j]:
                column[n] = j
                cre[n] = creator[r, j]
                if fresh[r, j]:
                    fresh_pos[n_fresh] = n
                    n_fresh += 1
                n += 1
        reg_ptr, fr_ptr = 0, 0
        n_wait_reg, n_wait_fr = 0, 0
        reg_free, fr_free = False, False
        length = 0
        for i in range(min(feed_length, n)):
            p = -1
            if slots[i]:
                p, fr_ptr, fr_free, n_wait_fr = _take(
                    fresh_pos,
                    n_fresh,
                    fr_ptr,
                    fr_free,
                    head_fr,
                    tail_fr,
                    nxt_fr,
                    wait_fr,
                    n_wait_fr,
                    cre,
                    counts,
                    cap,
                    used,
                )
            if p < 0:
                p, reg_ptr, reg_free, n_wait_reg = _take(
                    everyone,
                    n,
                    reg_ptr,
                    reg_free,
                    head_reg,
                    tail_reg,
                    nxt_reg,
                    wait_reg,
                    n_wait_reg,
                    cre,
                    counts,
                    cap,
                    used,
                )
                if p < 0:
                    break  # only blocked or no candidates left: end the feed rather than break the cap
            used[p] = True
            picks[length] = p
            length += 1
            counts[cre[p]] += 1
            # Counts cover the last span picks: the next pick completes a window of span + 1.
            if i >= span:
                c = cre[picks[i - span]]
                counts[c] -= 1
                if head_reg[c] >= 0:
                    reg_free = True
                if head_fr[c] >= 0:
                    fr_free = True
        for k in range(length):
            out[r, k] = column[picks[k]]
        lengths[r] = length
        for j in range(n):
            c = cre[j]
            counts[c] = 0
            head_reg[c] = -1
            tail_reg[c] = -1
            head_fr[c] = -1
            tail_fr[c] = -1
            used[j] = False
