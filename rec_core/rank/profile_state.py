"""One user's side of the ranker's feature state, from a profile: what the API knows of a user the snapshot lacks.

The batch reads each user's counts from the lake as of the snapshot (:func:`~rec_core.rank.state.state_at`). A user
the build never saw reads the neutral row, no history at all, even after watching and liking in the API: the live
vector moves with every like, but a ranker that learned "a user without history gets the popular videos" would
override it. :func:`profile_state` gives such a user their own row 0, built the way the batch builds a row from
the profile's watches (the API's live history folded into the posted profile), so the same features read it.

A profile carries no instants, so every watch counts as recent: in each "last N days" window, in the recent-taste
weights (weight 1), and the user is not idle. Videos the snapshot does not know count as events but give no
creator or hashtag.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from rec_core.model.inference import UserProfile
from rec_core.rank.state import NEVER_ACTIVE_IDLE_DAYS, WINDOWS_DAYS, AsOfState, PairCounts


def profile_state(state: AsOfState, video_rows: np.ndarray, profile: UserProfile, followed: np.ndarray) -> AsOfState:
    """``state`` with one user, row 0, whose history is ``profile``'s watches: ``video_rows`` their state rows, one
    per watch (-1 for a video the snapshot lacks), ``followed`` the state's creator codes of the creators they
    follow (unknown ones left out). Item-side arrays are ``state``'s, shared."""
    events = state.events
    n_items = events.item_tags.shape[0]
    watched = np.asarray(video_rows, dtype=np.int64)
    known = watched[watched >= 0]
    n = float(len(watched))
    ones = np.ones(len(known), dtype=np.float32)
    history = sp.csr_matrix((ones, (np.zeros(len(known), dtype=np.int64), known)), shape=(1, n_items))
    history.sum_duplicates()
    # Per request in the API: only the history's rows are read (a catalogue-sized matrix would cost more than the page).
    creators, per_creator = np.unique(events.item_creator[known], return_counts=True)
    tags = history @ events.item_tags
    follows = np.unique(np.asarray(followed, dtype=np.int64))
    liked = len(profile.liked)
    return dataclasses.replace(
        state,
        user_events=np.array([n]),
        user_window_events=np.full((len(WINDOWS_DAYS), 1), n),
        user_days_idle=np.array([0.0 if n else NEVER_ACTIVE_IDLE_DAYS]),  # a watch just now, or none
        user_completion=np.array([float(profile.completion_rate or 0.0)]),
        user_like_rate=np.array([liked / n if n else 0.0]),
        user_creator=PairCounts(creators.astype(np.int64), per_creator.astype(np.float32), state.user_creator.n_cols),
        user_tag=PairCounts.from_csr(tags),
        user_tag_recent=PairCounts.from_csr(tags),
        user_recent_weight=np.array([float(len(known))]),
        follows=PairCounts(follows, np.ones(len(follows), dtype=np.float32), state.follows.n_cols),
        seen=history.astype(bool).astype(np.float32).tocsr(),
        user_t_ms=np.array([state.t_ms], dtype=np.int64),
    )
