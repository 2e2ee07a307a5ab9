"""Training examples for the ranker, with the split's temporal discipline.

The towers are trained on everything before the validation cut t = ``valid_start``. An example is a (user,
candidate) pair of a user active in the validation window ``[t, test_start)``: the candidates are the towers' top N
over the full catalogue as of t, minus what the user watched before t, and the features are as of t
(:mod:`rec_core.rank.state`). The label is what the user did with the candidate in the window: 0 nothing, 1 watched,
2 watched and liked (LightGBM's lambdarank takes graded labels; the binary objective reads label > 0). A user is a
group; groups without a positive teach a ranking nothing and are dropped, and users are subsampled for speed.

The test period is never read. To score it, the same features are computed as of ``test_start`` from everything
before it (:mod:`rec_core.rank.scoring`), which is how a batch built at "now" would see it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from rec_core.data.split import Split
from rec_core.rank.candidates import DEFAULT_CANDIDATES, candidate_block
from rec_core.rank.events import RankEvents
from rec_core.rank.retrieval import Towers, TowerView, tower_view
from rec_core.rank.state import AsOfState, state_at

log = logging.getLogger(__name__)

DEFAULT_MAX_USERS = 2000
BLOCK_USERS = 512  # users a block: the feed batch's block size, and what bounds the (users x catalogue) scores


@dataclass(frozen=True, slots=True)
class RankExamples:
    """Feature rows grouped by user (consecutive), with graded labels."""

    features: np.ndarray  # float32 (rows, len(FEATURES))
    labels: np.ndarray  # int32 (rows,): 0, 1 watched, 2 liked
    groups: np.ndarray  # int64 (n_groups,): rows per group, in order
    users: np.ndarray  # int64 (n_groups,): the user of each group
    t_ms: int  # features as of this instant
    until_ms: int  # labels from [t_ms, until_ms)
    n_candidates: int
    candidate_recall: float  # share of the sampled users' label pairs that made their candidate lists

    @property
    def group_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.groups)), self.groups)


def label_matrix(events: RankEvents, t_ms: int, until_ms: int) -> sp.csr_matrix:
    """users x items, int: the best label of each pair in ``[t_ms, until_ms)`` (1 watched, 2 liked)."""
    lo, hi = events.interactions_before(t_ms), events.interactions_before(until_ms)
    grade = 1 + events.liked[lo:hi].astype(np.int64)
    # Max over repeated watches: sort by grade so the last write of a pair is its best.
    order = np.argsort(grade, kind="stable")
    dense_key = events.user[lo:hi][order] * events.n_items + events.item[lo:hi][order]
    keys, last = np.unique(dense_key[::-1], return_index=True)
    best = grade[order][::-1][last]
    return sp.csr_matrix(
        (best.astype(np.int32), (keys // events.n_items, keys % events.n_items)), shape=(events.n_users, events.n_items)
    )


def build_examples(
    view: TowerView,
    state: AsOfState,
    until_ms: int,
    n: int = DEFAULT_CANDIDATES,
    max_users: int = DEFAULT_MAX_USERS,
    seed: int = 0,
) -> RankExamples:
    """Examples of the users active in ``[state.t_ms, until_ms)``, at most ``max_users`` of them (a seeded sample)."""
    labels = label_matrix(state.events, state.t_ms, until_ms)
    active = np.flatnonzero(np.diff(labels.indptr) > 0)
    if len(active) > max_users:
        active = np.sort(np.random.default_rng(seed).choice(active, size=max_users, replace=False))
    feats, grades, groups, users = [], [], [], []
    reached, wanted = 0, 0
    for lo in range(0, len(active), BLOCK_USERS):
        block = candidate_block(view, state, active[lo : lo + BLOCK_USERS], n)
        r, c = np.nonzero(block.valid)
        grade = np.asarray(labels[block.users[r], block.items[r, c]]).ravel().astype(np.int32)
        per_user = np.bincount(r, weights=grade > 0, minlength=len(block.users))
        # Pairs the user watched before t are never candidates, so they are not counted as missed.
        sub = labels[block.users]
        wanted += sub.nnz - sub.multiply(state.seen[block.users]).nnz
        reached += int(per_user.sum())
        keep = per_user[r] > 0  # a group without a positive has nothing to rank
        feats.append(block.features[keep])
        grades.append(grade[keep])
        kept = np.flatnonzero(per_user > 0)
        groups.append(np.bincount(r[keep], minlength=len(block.users))[kept])
        users.append(block.users[kept])
    out = RankExamples(
        features=np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
        labels=np.concatenate(grades) if grades else np.zeros(0, np.int32),
        groups=np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, np.int64),
        users=np.concatenate(users) if users else np.zeros(0, np.int64),
        t_ms=state.t_ms,
        until_ms=int(until_ms),
        n_candidates=n,
        candidate_recall=reached / wanted if wanted else float("nan"),
    )
    log.info(
        "ranker examples as of %d: %d users (%d with a positive among the candidates), %d rows, %.1f%% positive, "
        "candidate recall %.3f",
        state.t_ms,
        len(active),
        len(out.groups),
        len(out.labels),
        100.0 * float((out.labels > 0).mean()) if len(out.labels) else 0.0,
        out.candidate_recall,
    )
    return out


def split_examples(
    towers: Towers,
    events: RankEvents,
    split: Split,
    frames: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    n: int = DEFAULT_CANDIDATES,
    max_users: int = DEFAULT_MAX_USERS,
    seed: int = 0,
) -> RankExamples:
    """Examples on a temporal split: towers and features as of ``valid_start``, labels from the validation window.

    ``frames`` are (videos, interactions, follows) as the towers read them; ``events`` holds the same frames.
    """
    if getattr(split, "protocol", "temporal") != "temporal":
        raise ValueError("the ranker's examples need one global cut (the temporal protocol)")
    if not np.array_equal(events.user_ids, split.user_ids) or not np.array_equal(events.item_ids, split.item_ids):
        raise ValueError("events and split index users or videos differently")
    videos, interactions, follows = frames
    t = split.valid_start_ms
    view = tower_view(towers, split.user_ids, videos, interactions, follows, t)
    return build_examples(view, state_at(events, t), split.test_start_ms, n, max_users, seed)
