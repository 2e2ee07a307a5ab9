"""Retrieval then features for a block of users, as of one instant: what the ranker is trained on and applied to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rec_core.feed.membership_kernel import first_in_rows
from rec_core.rank.features import block_features
from rec_core.rank.retrieval import PostedVideos, TowerView
from rec_core.rank.state import HALF_LIVES_DAYS, WINDOWS_DAYS, AsOfState

# The towers' top N that the ranker reorders. 200, not 500: on MovieLens (both protocols) the top 200 measured as
# well as the top 500 against retrieval alone and the baselines, at 0.4 of the ranking cost per user (features,
# engagement head and trees all scale with N), which the batch pays for every user (docs/quality.md, performance.md).
DEFAULT_CANDIDATES = 200
# The second candidate source: the most-watched videos as of t behind the towers' N (those not among them), for
# the ranker to weigh against the towers' picks. How many is REC_RANKER_POPULAR; a ranker's files say its own count
# and rule. The rule: recency-weighted counts (30-day half-life); all-time and last-7-days counts measured the same
# within a few thousandths at both scales (benchmarks/candidate_sources.py, docs/quality.md).
POPULAR_SOURCES = ("all_time", "decayed_30d", "window_7d")
POPULAR_SOURCE = "decayed_30d"


@dataclass(frozen=True, slots=True)
class RankBlock:
    """Candidate lists of ``users`` (best first by the towers) with their features."""

    users: np.ndarray  # int64 [rows]
    items: np.ndarray  # int64 [rows, n]; -1: none
    tower_score: np.ndarray  # float32 [rows, n]
    features: np.ndarray  # float32 [valid cells, len(FEATURES)], row-major over the valid cells
    valid: np.ndarray  # bool [rows, n]
    seconds: dict[str, float] = field(default_factory=dict)  # "retrieve" and "features" wall time


def popular_items(state: AsOfState, k: int, source: str = POPULAR_SOURCE) -> np.ndarray:
    """int64 [<= k]: the ``k`` videos posted before t with the most interactions before t by ``source`` (all of
    them, recency-weighted with a 30-day half-life, or the last 7 days'), best first, ties to the lower index."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if source == "all_time":
        count = state.item_views
    elif source == "decayed_30d":
        count = state.item_decayed[HALF_LIVES_DAYS.index(30.0)]
    elif source == "window_7d":
        count = state.item_window_views[WINDOWS_DAYS.index(7)]
    else:
        raise ValueError(f"popularity source {source!r} is not one of {POPULAR_SOURCES}")
    posted = np.flatnonzero(state.item_posted & (count > 0))
    order = np.lexsort((posted, -count[posted]))
    return posted[order[:k]].astype(np.int64)


def with_popular(
    items: np.ndarray,
    scores: np.ndarray,
    popular: np.ndarray,
    popular_scores: np.ndarray,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ranker's candidate layout: the towers' top ``n`` (the first ``n`` columns of ``items``, rows best first,
    -1 for none), then ``popular`` (one list for every row), then the rest of ``items``.

    Each row's copy of ``popular`` leaves out (-1 / NaN) what its top ``n`` holds and what scores ``-inf`` or NaN in
    ``popular_scores`` (rows, len(popular): seen); the rest of ``items`` leaves out what the row's popular part
    kept, so a row holds a video once. ``n`` None: all of ``items`` (training and the evaluation pass exactly the
    towers' top N; the batch passes a deeper top-k). Returns (items, scores), (rows, width + len(popular)).
    """
    n = items.shape[1] if n is None else n
    rows = items.shape[0]
    extra = np.broadcast_to(np.asarray(popular, dtype=np.int64), (rows, len(popular)))
    scored = np.isfinite(popular_scores)  # not seen
    extra = np.where(scored, extra, -1)
    extra_scores = np.where(scored, popular_scores, np.nan).astype(np.float32, copy=False)
    out = np.concatenate([items[:, :n], extra, items[:, n:]], axis=1)
    out_scores = np.concatenate([scores[:, :n], extra_scores, scores[:, n:]], axis=1).astype(np.float32, copy=False)
    # The towers' list holds a video once and the popular list too, so each row's repeats are exactly a popular
    # video the towers' top n holds, and a video of the rest that the row's popular part kept: its first sight stays.
    repeat = ~first_in_rows(out) & (out >= 0)
    out[repeat] = -1
    out_scores[repeat] = np.nan
    return out, out_scores


def candidate_block(
    view: TowerView,
    state: AsOfState,
    users: np.ndarray,
    n: int = DEFAULT_CANDIDATES,
    popular: np.ndarray | None = None,
    posted: PostedVideos | None = None,
) -> RankBlock:
    """The towers' top ``n`` unseen videos of each user, then the ``popular`` ones (:func:`popular_items`) they do
    not hold and the user has not seen, and their features, all as of ``state.t_ms``. ``posted``: the view's
    videos posted by then (:meth:`PostedVideos.of`), where the caller keeps them for many blocks."""
    if view.t_ms != state.t_ms:
        raise ValueError(f"towers as of {view.t_ms} but features as of {state.t_ms}: both must be one instant")
    users = np.asarray(users, dtype=np.int64)
    started = time.perf_counter()
    user_vecs = view.user_vectors(users)
    if posted is None:
        posted = PostedVideos.of(view.video_vectors, state.item_posted)
    items, top = posted.top(user_vecs, state.seen, users, n)
    if popular is not None and len(popular):
        items, top = with_popular(items, top, popular, _unseen_scores(view, state, users, user_vecs, popular))
    retrieved = time.perf_counter()
    engagement = view.engagement(user_vecs, items)
    features, valid = block_features(state, users, items, top, engagement, towers_width=n)
    done = time.perf_counter()
    return RankBlock(
        users, items, top, features, valid, {"retrieve": retrieved - started, "features": done - retrieved}
    )


def _unseen_scores(
    view: TowerView, state: AsOfState, users: np.ndarray, user_vecs: torch.Tensor, items: np.ndarray
) -> np.ndarray:
    """float32 (users, items): the towers' score of each of ``items`` (posted videos), ``-inf`` where seen."""
    with torch.inference_mode():
        scores = (user_vecs @ view.video_vectors[torch.from_numpy(np.asarray(items, dtype=np.int64))].T).numpy()
    scores[state.seen[users][:, items].toarray() != 0] = -np.inf
    return scores
