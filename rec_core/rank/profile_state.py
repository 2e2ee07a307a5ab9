"""One user's side of the ranker's feature state, from a profile: what the API knows of a user since the snapshot.

The batch reads each user's counts from the lake as of the snapshot (:func:`~rec_core.rank.state.state_at`). A user
the build never saw reads the neutral row, no history at all, even after watching and liking in the API: the live
vector moves with every like, but a ranker that learned "a user without history gets the popular videos" would
override it. A user the build knew reads their row as of the snapshot, blind to what they did since. So
:func:`profile_state` gives the user their own row 0, built the way the batch builds a row: a fresh user's from their
profile's watches (the API's live history folded into the posted profile), a known user's from their snapshot row
with the watches since the snapshot added (the API's user state is exactly those: it is replayed from the inbox
offsets the snapshot's batch had taken in), so the same features read it.

A profile carries no instants, so every watch in it counts as recent: in each "last N days" window, in the
recent-taste weights (weight 1), and the user is not idle. A known user's counts from the snapshot keep their
instants as of the snapshot. Videos the snapshot does not know count as events but give no creator or hashtag.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from rec_core.model.inference import UserProfile
from rec_core.rank.features import row_entries
from rec_core.rank.state import NEVER_ACTIVE_IDLE_DAYS, WINDOWS_DAYS, AsOfState, PairCounts


def profile_state(
    state: AsOfState,
    video_rows: np.ndarray,
    profile: UserProfile,
    followed: np.ndarray,
    base_row: int | None = None,
) -> AsOfState:
    """``state`` with one user, row 0, whose history is ``profile``'s watches (after ``base_row``'s, a user the
    state knows): ``video_rows`` their state rows, one per watch (-1 for a video the snapshot lacks), ``followed``
    the state's creator codes of the creators they follow (unknown ones left out). Item-side arrays are ``state``'s,
    shared."""
    # Per request in the API: only the history's rows are read, as (column, value) arrays (a catalogue-sized
    # matrix, or scipy's sparse arithmetic on one row, would cost more than the page).
    events = state.events
    watched = np.asarray(video_rows, dtype=np.int64)
    known = watched[watched >= 0]
    n = float(len(watched))
    ones = np.ones(len(known), dtype=np.float32)
    tags = _rows_of(events.item_tags, known)
    follows = np.asarray(followed, dtype=np.int64)
    base = _Base.of(state, base_row)
    total = base.events + n
    seen = np.union1d(base.seen, known)
    return dataclasses.replace(
        state,
        user_events=np.array([total]),
        user_window_events=(base.window_events + n)[:, None],
        user_days_idle=np.array([0.0 if n else base.days_idle]),  # a watch just now, or the snapshot's
        user_completion=np.array([_mean(base.completion, base.events, float(profile.completion_rate or 0.0), n)]),
        user_like_rate=np.array([(base.like_rate * base.events + len(profile.liked)) / total if total else 0.0]),
        user_creator=_summed(state.user_creator.n_cols, base.creator, (events.item_creator[known], ones)),
        user_tag=_summed(state.user_tag.n_cols, base.tag, tags),
        user_tag_recent=_summed(state.user_tag_recent.n_cols, base.tag_recent, tags),
        user_recent_weight=np.array([base.recent_weight + float(len(known))]),
        follows=_summed(
            state.follows.n_cols, base.follows, (follows, np.ones(len(follows), dtype=np.float32)), ones=True
        ),
        seen=sp.csr_matrix(
            (np.ones(len(seen), dtype=np.float32), seen, np.array([0, len(seen)])), shape=(1, state.seen.shape[1])
        ),
        user_t_ms=np.array([state.t_ms], dtype=np.int64),
    )


Row = tuple[np.ndarray, np.ndarray]  # one user's (columns, values) in a pair table


@dataclasses.dataclass(frozen=True, slots=True)
class _Base:
    """A user's counts before the profile: their row as of the state, or nothing."""

    events: float
    window_events: np.ndarray  # (len(WINDOWS_DAYS),)
    days_idle: float
    completion: float
    like_rate: float
    recent_weight: float
    creator: Row
    tag: Row
    tag_recent: Row
    follows: Row
    seen: np.ndarray  # int64 item rows

    @classmethod
    def of(cls, state: AsOfState, row: int | None) -> _Base:
        if row is None:
            empty: Row = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
            return cls(0.0, np.zeros(len(WINDOWS_DAYS)), NEVER_ACTIVE_IDLE_DAYS, 0.0, 0.0, 0.0, *[empty] * 4, empty[0])
        seen = state.seen
        return cls(
            float(state.user_events[row]),
            np.asarray(state.user_window_events[:, row], dtype=np.float64),
            float(state.user_days_idle[row]),
            float(state.user_completion[row]),
            float(state.user_like_rate[row]),
            float(state.user_recent_weight[row]),
            *(_row(p, row) for p in (state.user_creator, state.user_tag, state.user_tag_recent, state.follows)),
            np.asarray(seen.indices[seen.indptr[row] : seen.indptr[row + 1]], dtype=np.int64),
        )


def _row(pairs: PairCounts, row: int) -> Row:
    """One row of a pair table: two binary searches, so a mapped table reads a few pages."""
    lo, hi = np.searchsorted(pairs.keys, [row * pairs.n_cols, (row + 1) * pairs.n_cols])
    return np.asarray(pairs.keys[lo:hi]) - row * pairs.n_cols, np.asarray(pairs.values[lo:hi], dtype=np.float32)


def _rows_of(matrix: sp.csr_matrix, rows: np.ndarray) -> Row:
    """The (column, value) entries of ``rows`` of ``matrix``, one after the other (repeats kept)."""
    at, _ = row_entries(matrix, rows)
    return matrix.indices[at].astype(np.int64), matrix.data[at].astype(np.float32)


def _summed(n_cols: int, *parts: Row, ones: bool = False) -> PairCounts:
    """Row 0 of a pair table: the parts' values summed per column (``ones``: 1 wherever any part has one)."""
    cols = np.concatenate([c for c, _ in parts])
    values = np.concatenate([v for _, v in parts]).astype(np.float64)
    unique, at = np.unique(cols, return_inverse=True)
    summed = np.ones(len(unique)) if ones else np.bincount(at, weights=values, minlength=len(unique))
    return PairCounts(unique.astype(np.int64), summed.astype(np.float32), n_cols)


def _mean(base_mean: float, base_n: float, mean: float, n: float) -> float:
    return (base_mean * base_n + mean * n) / (base_n + n) if base_n + n else 0.0
