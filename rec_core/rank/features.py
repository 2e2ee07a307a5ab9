"""Features of (user, candidate video) pairs as of an instant: the ranker's input, one named float32 column each.

Every column reads an :class:`~rec_core.rank.state.AsOfState` (counts over the interactions and follows before t),
the video's static content, or what the towers said about the pair (their score, the candidate's position in their
list, the engagement head's predictions, all computed from tower inputs as of the same t). Groups:

* the towers: score, retrieval position, gap to the user's best candidate, predicted completion / watch / like;
* the user and the video: follows the creator, share of the user's history on the creator, affinity to the
  video's hashtags (all-time and recent taste);
* the video: age, lifetime views and views per day of age, its share of all interactions of the last 1 / 7 / 30
  days and recency-weighted popularity (what is watched now), the share of its views that are recent, smoothed
  completion and like rates, its creator's recent share and output, its hashtags' recent share and lift;
* the user: history length, recent activity, days idle, mean completion and like rate.

Counts enter as shares of the same window's total, not raw: the ranker is trained at one cut and applied at another,
and a raw "views in the last 7 days" drifts with the site's traffic between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rec_core.rank.state import HALF_LIVES_DAYS, WINDOWS_DAYS, AsOfState

ENGAGEMENT = ("eng_completion", "eng_watch", "eng_like")  # the towers' engagement head, in its output order
FEATURES: tuple[str, ...] = (
    "tower_score",
    "tower_rank",
    "tower_gap",
    *ENGAGEMENT,
    "follows_creator",
    "creator_affinity",
    "tag_affinity_mean",
    "tag_affinity_max",
    "tag_affinity_recent",
    "log_age_days",
    "log_views",
    "log_views_per_day",
    *(f"share_{d}d" for d in WINDOWS_DAYS),
    *(f"popularity_{h:g}d" for h in HALF_LIVES_DAYS),
    "recent_fraction_7d",
    "completion_rate",
    "like_rate",
    "creator_share_30d",
    "log_creator_videos",
    "tag_share_30d",
    "tag_lift",
    "log_user_events",
    *(f"log_user_events_{d}d" for d in WINDOWS_DAYS),
    "log_user_idle_days",
    "user_completion",
    "user_like_rate",
)
# Columns that do not read the interactions or follows at all (a pure function of t, content and position).
TIME_ONLY = ("tower_rank", "log_age_days", "log_creator_videos")
DAY_MS = 86_400_000
_LIFT_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class TowerSignals:
    """What the towers said about each pair (flat, aligned with the pairs)."""

    score: np.ndarray  # float32: user . video
    rank: np.ndarray  # int64: the video's position in the user's candidate list (0 = the towers' best)
    best: np.ndarray  # float32: the best score of the user's candidate list
    engagement: np.ndarray | None = None  # float32 (pairs, 3) in ENGAGEMENT order; None: not available (NaN)


def pair_features(state: AsOfState, user: np.ndarray, item: np.ndarray, tower: TowerSignals) -> np.ndarray:
    """float32 (pairs, len(FEATURES)) for the flat pairs (``user[k]``, ``item[k]``), as of ``state.t_ms``."""
    ev = state.events
    user, item = np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64)
    n = len(user)
    creator = ev.item_creator[item]
    n_user = np.maximum(state.user_events[user], 1.0)
    tag_sum, tag_max, tag_recent, tag_30d, tag_lift = _tag_features(state, user, item)
    age_days = np.maximum(state.t_ms - ev.item_created_ms[item], 0) / DAY_MS
    views = state.item_views[item]
    engagement = tower.engagement if tower.engagement is not None else np.full((n, len(ENGAGEMENT)), np.nan)
    i30 = WINDOWS_DAYS.index(30)
    columns = {
        "tower_score": tower.score,
        "tower_rank": tower.rank,
        "tower_gap": tower.best - tower.score,
        **{name: engagement[:, k] for k, name in enumerate(ENGAGEMENT)},
        "follows_creator": state.follows.get(user, creator),
        "creator_affinity": state.user_creator.get(user, creator) / n_user,
        "tag_affinity_mean": tag_sum / n_user,
        "tag_affinity_max": tag_max / n_user,
        "tag_affinity_recent": tag_recent / np.maximum(state.user_recent_weight[user], 1e-9),
        "log_age_days": np.log1p(age_days),
        "log_views": np.log1p(views),
        "log_views_per_day": np.log1p(views / np.maximum(age_days, 1.0)),
        **{
            f"share_{d}d": state.item_window_views[w, item] / max(state.window_totals[w], 1.0)
            for w, d in enumerate(WINDOWS_DAYS)
        },
        **{
            f"popularity_{h:g}d": state.item_decayed[k, item] / max(state.decayed_totals[k], 1e-9)
            for k, h in enumerate(HALF_LIVES_DAYS)
        },
        "recent_fraction_7d": state.item_window_views[WINDOWS_DAYS.index(7), item] / np.maximum(views, 1.0),
        "completion_rate": state.item_completion_rate[item],
        "like_rate": state.item_like_rate[item],
        "creator_share_30d": state.creator_window_views[i30, creator] / max(state.window_totals[i30], 1.0),
        "log_creator_videos": np.log1p(state.creator_videos[creator]),
        "tag_share_30d": tag_30d,
        "tag_lift": tag_lift,
        "log_user_events": np.log1p(state.user_events[user]),
        **{f"log_user_events_{d}d": np.log1p(state.user_window_events[w, user]) for w, d in enumerate(WINDOWS_DAYS)},
        "log_user_idle_days": np.log1p(state.user_days_idle[user]),
        "user_completion": state.user_completion[user],
        "user_like_rate": state.user_like_rate[user],
    }
    out = np.empty((n, len(FEATURES)), dtype=np.float32)
    for k, name in enumerate(FEATURES):
        out[:, k] = columns[name]
    return out


def _tag_features(
    state: AsOfState, user: np.ndarray, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, over the video's hashtags: the user's count summed (then averaged) and max, the recent-taste
    weight averaged, and the hashtags' mean share of the last 30 days and mean log lift over their all-time share."""
    tags = state.events.item_tags
    at, lengths = row_entries(tags, item)
    owner = np.repeat(np.arange(len(item), dtype=np.int64), lengths)
    tag = tags.indices[at].astype(np.int64)
    count = state.user_tag.get(user[owner], tag).astype(np.float64)
    recent = state.user_tag_recent.get(user[owner], tag).astype(np.float64)
    share_30d, share_all = state.tag_share_30d[tag], state.tag_share_all[tag]
    lift = np.log((share_30d + _LIFT_EPS) / (share_all + _LIFT_EPS))
    n_tags = np.maximum(lengths, 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=len(item)) / n_tags

    return mean(count), _segment_max(count, lengths), mean(recent), mean(share_30d), mean(lift)


def row_entries(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``matrix.indices`` / ``.data`` of the entries of ``rows``, row after row (repeats kept), and
    each row's number of entries."""
    starts = matrix.indptr[rows]
    lengths = (matrix.indptr[np.asarray(rows) + 1] - starts).astype(np.int64)
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum())), lengths


def _segment_max(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Max of each consecutive segment of ``values`` (``lengths`` long each); 0 for an empty segment."""
    out = np.zeros(len(lengths), dtype=np.float64)
    full = lengths > 0
    if full.any():
        starts = (np.cumsum(lengths) - lengths)[full]
        out[full] = np.maximum.reduceat(values, starts)
    return out


def block_features(
    state: AsOfState,
    users: np.ndarray,
    items: np.ndarray,
    tower_score: np.ndarray,
    engagement: np.ndarray | None = None,
    towers_width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of a block of candidate lists: ``items[r]`` (best first by the towers, -1 for none) of user
    ``users[r]``, with the towers' ``tower_score`` and ``engagement`` (rows, width, 3) aligned with ``items``.
    Columns from ``towers_width`` on come from another source (the popular videos): their ``tower_rank`` reads
    ``towers_width``, past the towers' list, whatever their column.

    The shape the feed pipeline's stages exchange (one row per user, 512 a block in the batch, one live), so the
    same call serves training examples, the offline evaluation and a scorer stage. Returns (float32
    (valid pairs, len(FEATURES)) in row-major order of the valid cells, bool (rows, width) which cells are valid).
    """
    valid = np.asarray(items) >= 0
    r, c = np.nonzero(valid)
    best = np.max(np.where(valid, tower_score, -np.inf), axis=1, initial=-np.inf)
    signals = TowerSignals(
        score=tower_score[r, c].astype(np.float32),
        rank=(c if towers_width is None else np.minimum(c, towers_width)).astype(np.int64),
        best=best[r].astype(np.float32),
        engagement=None if engagement is None else engagement[r, c],
    )
    return pair_features(state, np.asarray(users, dtype=np.int64)[r], items[r, c], signals), valid
