"""What was known at an instant t: counts over the interactions and follows strictly before t.

:func:`state_at` is the one place the ranker's features meet time. It keeps the events with ``ts < t`` (a prefix of
the time-sorted arrays of :class:`~rec_core.rank.events.RankEvents`) and counts from them alone, so nothing a
feature reads can come from t or later (``tests/test_ranker.py`` appends events after t and checks that every
feature stays the same). Windows ("the last 7 days") end at t; recency weights decay from t; smoothing priors are
means over the same past.

With per-user cuts (``user_cut_ms``: the leave-last-out split, where each user is held out from their own instant,
:meth:`rec_core.data.split.Split.cuts`) an event is known only if it is before t *and* before its own user's cut,
for every count: the user's own later events reach neither their features nor anyone's popularity counts. The
user's features (history, activity windows, days idle, recent taste) are then measured from their own instant
``min(cut, t)``; what describes the videos (popularity windows, ages, "posted") stays measured from t, as the
towers' catalogue is under that split: other users' events up to t count, the leakage the split admits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit

from rec_core.rank.events import RankEvents

DAY_MS = 86_400_000
WINDOWS_DAYS = (1, 7, 30)  # "interactions in the last N days" of a video, a creator, a hashtag and a user
NEVER_ACTIVE_IDLE_DAYS = 10_000.0  # a user's days idle before their first interaction
HALF_LIVES_DAYS = (30.0, 180.0)  # recency-weighted popularity (180 d: the half-life of make eval's recent MostPop)
TASTE_HALF_LIFE_DAYS = 30.0  # a user's recent taste: their hashtags with each watch's weight halved every 30 days
RATE_PRIOR_VIEWS = 20.0  # completion and like rates are smoothed towards the global mean with this many views


@dataclass(frozen=True, slots=True)
class PairCounts:
    """A sparse (row, column) -> value table with vectorised lookup: the user's count for a creator, a hashtag."""

    keys: np.ndarray  # int64, sorted: row * n_cols + col
    values: np.ndarray  # float32, aligned with keys
    n_cols: int

    def __post_init__(self) -> None:
        self.get(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))  # compiled (or cached) now, not in a request

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix) -> PairCounts:
        m = matrix.tocsr()
        m.sum_duplicates()
        m.sort_indices()
        rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        return cls(rows * m.shape[1] + m.indices.astype(np.int64), m.data.astype(np.float32), int(m.shape[1]))

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 of ``rows``' shape: the value at each (row, col), 0 where absent (or outside the table)."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape:
            raise ValueError(f"{rows.shape} rows for {cols.shape} columns")
        flat = _lookup(self.keys, self.values, self.n_cols, rows.ravel(), cols.ravel())
        return flat.reshape(rows.shape)


@njit(cache=True, nogil=True)
def _lookup(keys: np.ndarray, values: np.ndarray, n_cols: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # Lookups come grouped by row (a user's candidates, then the next user's): each row's few entries are found by
    # two binary searches, spread over a dense scratch row and read by index, instead of a binary search of the
    # whole table per lookup (its last steps miss the cache: 15x slower on a 2 M-entry table). Nothing is indexed
    # ahead: a snapshot's tables are mapped, and an index of every row would read all their pages in.
    out = np.zeros(rows.shape[0], dtype=np.float32)
    scratch = np.zeros(n_cols, dtype=np.float32)
    current, lo, hi = -1, 0, 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r != current:
            for j in range(lo, hi):
                scratch[keys[j] - current * n_cols] = 0.0
            current, lo, hi = r, 0, 0
            if r >= 0:
                lo = np.searchsorted(keys, r * n_cols)
                hi = np.searchsorted(keys, (r + 1) * n_cols)
                for j in range(lo, hi):
                    scratch[keys[j] - r * n_cols] = values[j]
        if 0 <= cols[i] < n_cols:
            out[i] = scratch[cols[i]]
    return out


@dataclass(frozen=True, slots=True)
class AsOfState:
    """Everything the ranker's features read, as of ``t_ms``; arrays are per item, creator, hashtag or user."""

    t_ms: int
    events: RankEvents  # static content (creators, hashtags, creation times) and the index spaces
    item_views: np.ndarray  # float64 per item: interactions before t
    item_window_views: np.ndarray  # float64 (len(WINDOWS_DAYS), n_items): in the last N days before t
    window_totals: np.ndarray  # float64 (len(WINDOWS_DAYS),): all interactions in those windows
    item_decayed: np.ndarray  # float64 (len(HALF_LIVES_DAYS), n_items): recency-weighted interactions
    decayed_totals: np.ndarray  # float64 (len(HALF_LIVES_DAYS),)
    item_completion_rate: np.ndarray  # float64 per item, smoothed towards the global mean
    item_like_rate: np.ndarray  # float64 per item, smoothed
    creator_window_views: np.ndarray  # float64 (len(WINDOWS_DAYS), n_creators)
    creator_videos: np.ndarray  # float64 per creator: videos posted before t
    item_posted: np.ndarray  # bool per item: posted before t (a later video does not exist yet at t)
    tag_share_30d: np.ndarray  # float64 per hashtag: its videos' share of the last 30 days' interactions
    tag_share_all: np.ndarray  # float64 per hashtag: the same over all time before t
    user_events: np.ndarray  # float64 per user: interactions before t
    user_window_events: np.ndarray  # float64 (len(WINDOWS_DAYS), n_users)
    user_days_idle: np.ndarray  # float64 per user: days since their last interaction (large when none)
    user_completion: np.ndarray  # float64 per user: mean completion (0 when none)
    user_like_rate: np.ndarray  # float64 per user
    user_creator: PairCounts  # interactions of the user with the creator's videos
    user_tag: PairCounts  # interactions of the user with videos carrying the hashtag
    user_tag_recent: PairCounts  # the same, each weighted by 0.5 ** (age / TASTE_HALF_LIFE_DAYS)
    user_recent_weight: np.ndarray  # float64 per user: the sum of those weights over their interactions
    follows: PairCounts  # 1 where the user followed the creator before t
    seen: sp.csr_matrix  # users x items, binary: watched before t (never a candidate)
    user_t_ms: np.ndarray  # int64 per user: where the user's own past ends (t, or their cut when earlier)


def state_at(events: RankEvents, t_ms: int, user_cut_ms: np.ndarray | None = None) -> AsOfState:
    """The state of the world just before ``t_ms``, from ``events`` with ``ts < t_ms`` only; with ``user_cut_ms``
    (int64 per user), also only the events before their own user's cut (see the module docstring)."""
    t_ms = int(t_ms)
    n_users, n_items, n_creators = events.n_users, events.n_items, events.n_creators
    cut = events.interactions_before(t_ms)
    n_follows = events.follows_before(t_ms)
    if user_cut_ms is None:
        user_t = np.full(n_users, t_ms, dtype=np.int64)
        known: slice | np.ndarray = slice(0, cut)
        known_follows: slice | np.ndarray = slice(0, n_follows)
    else:
        user_t = np.minimum(np.asarray(user_cut_ms, dtype=np.int64), t_ms)
        known = np.flatnonzero(events.ts_ms[:cut] < user_t[events.user[:cut]])
        known_follows = np.flatnonzero(events.follow_ts_ms[:n_follows] < user_t[events.follow_user[:n_follows]])
    user, item, ts = events.user[known], events.item[known], events.ts_ms[known]
    completion, liked = events.completion[known].astype(np.float64), events.liked[known].astype(np.float64)
    n_known = len(user)
    age_days = (t_ms - ts) / DAY_MS
    in_window = [age_days <= d for d in WINDOWS_DAYS]
    user_age_days = (user_t[user] - ts) / DAY_MS  # the same ages seen from each user's own instant
    in_user_window = [user_age_days <= d for d in WINDOWS_DAYS]

    def per_item(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(item, weights=weights, minlength=n_items).astype(np.float64)

    def per_user(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(user, weights=weights, minlength=n_users).astype(np.float64)

    views = per_item()
    window_views = np.stack([per_item(w.astype(np.float64)) for w in in_window])
    decay = [decay_weights(age_days, h) for h in HALF_LIVES_DAYS]
    decayed = np.stack([per_item(w) for w in decay])
    mean_completion = float(completion.mean()) if n_known else 0.0
    mean_like = float(liked.mean()) if n_known else 0.0

    def smoothed(total: np.ndarray, prior: float) -> np.ndarray:
        return (total + prior * RATE_PRIOR_VIEWS) / (views + RATE_PRIOR_VIEWS)

    creator = events.item_creator
    posted = events.item_created_ms < t_ms
    tag_30d = np.asarray(events.item_tags.T @ window_views[WINDOWS_DAYS.index(30)]).ravel()
    tag_all = np.asarray(events.item_tags.T @ views).ravel()

    n_user = per_user()
    last = np.full(n_users, np.nan)
    if n_known:
        # Events are time-sorted, so each user's last index holds their latest instant.
        last_at = np.full(n_users, -1, dtype=np.int64)
        last_at[user] = np.arange(n_known)
        has = last_at >= 0
        last[has] = ts[last_at[has]]
    idle = np.where(np.isnan(last), NEVER_ACTIVE_IDLE_DAYS, (user_t - np.nan_to_num(last)) / DAY_MS)

    pairs = sp.csr_matrix((np.ones(n_known, dtype=np.float32), (user, item)), shape=(n_users, n_items))
    pairs.sum_duplicates()
    taste = decay_weights(user_age_days, TASTE_HALF_LIFE_DAYS)
    recent = sp.csr_matrix((taste.astype(np.float32), (user, item)), shape=(n_users, n_items))
    recent.sum_duplicates()
    item_creator = sp.csr_matrix(
        (np.ones(n_items, dtype=np.float32), (np.arange(n_items), creator)), shape=(n_items, n_creators)
    )
    follow_user = events.follow_user[known_follows]
    follows = sp.csr_matrix(
        (np.ones(len(follow_user), dtype=np.float32), (follow_user, events.follow_creator[known_follows])),
        shape=(n_users, n_creators),
    )
    follows.sum_duplicates()
    follows.data[:] = 1.0
    seen = pairs.copy()
    seen.data[:] = 1.0
    return AsOfState(
        t_ms=t_ms,
        events=events,
        item_views=views,
        item_window_views=window_views,
        window_totals=np.array([w.sum() for w in in_window], dtype=np.float64),
        item_decayed=decayed,
        decayed_totals=decayed.sum(axis=1),
        item_completion_rate=smoothed(per_item(completion), mean_completion),
        item_like_rate=smoothed(per_item(liked), mean_like),
        creator_window_views=np.stack([np.bincount(creator, weights=w, minlength=n_creators) for w in window_views]),
        creator_videos=np.bincount(creator[posted], minlength=n_creators).astype(np.float64),
        item_posted=posted,
        tag_share_30d=tag_30d / max(window_views[WINDOWS_DAYS.index(30)].sum(), 1.0),
        tag_share_all=tag_all / max(views.sum(), 1.0),
        user_events=n_user,
        user_window_events=np.stack([per_user(w.astype(np.float64)) for w in in_user_window]),
        user_days_idle=idle,
        user_completion=per_user(completion) / np.maximum(n_user, 1.0),
        user_like_rate=per_user(liked) / np.maximum(n_user, 1.0),
        user_creator=PairCounts.from_csr(pairs @ item_creator),
        user_tag=PairCounts.from_csr(pairs @ events.item_tags),
        user_tag_recent=PairCounts.from_csr(recent @ events.item_tags),
        user_recent_weight=per_user(taste),
        follows=PairCounts.from_csr(follows),
        seen=seen.tocsr(),
        user_t_ms=user_t,
    )


def decay_weights(age_days: np.ndarray, half_life_days: float) -> np.ndarray:
    return np.power(0.5, np.maximum(age_days, 0.0) / half_life_days)
