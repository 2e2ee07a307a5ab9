"""Training examples for the ranker, with the split's temporal discipline.

The towers are trained on everything before the validation cut t = ``valid_start``. An example is a (user,
candidate) pair of a user active in the validation window ``[t, test_start)``: the candidates are the towers' top N
over the full catalogue as of t, minus what the user watched before t, and the features are as of t
(:mod:`rec_core.rank.state`). The label is what the user did with the candidate in the window: 0 nothing, 1 watched,
2 watched and liked (LightGBM's lambdarank takes graded labels; the binary objective reads label > 0). A user is a
group; groups without a positive teach a ranking nothing and are dropped, and users are subsampled for speed.

The test period is never read. To score it, the same features are computed as of ``test_start`` from everything
before it (:func:`as_of_split` with ``"test"``, then :mod:`rec_core.rank.scoring`), which is how a batch built at
"now" would see it.

Under the leave-last-out split every user has their own cuts (:meth:`rec_core.data.split.Split.cuts`): a user's
examples are labelled by their own validation rows ``[valid cut, test cut)`` and their features see their own
interactions before their validation cut only (their training part), with everyone else's training part up to
``valid_start``, as the towers were trained; the test is scored from each user's own test cut the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from rec_core.data.split import Split
from rec_core.rank.candidates import DEFAULT_CANDIDATES, POPULAR_SOURCE, candidate_block, popular_items
from rec_core.rank.events import RankEvents
from rec_core.rank.retrieval import PostedVideos, Towers, TowerView, tower_view
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
    n_popular: int = 0  # popular videos behind the towers' N (rec_core.rank.candidates.popular_items)
    popular_source: str = POPULAR_SOURCE
    windows: int = 1  # label windows pooled (:func:`pooled`); t_ms, until_ms and candidate_recall are the latest's

    @property
    def group_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.groups)), self.groups)


def pooled(parts: list[RankExamples]) -> RankExamples:
    """The examples of several label windows as one set, the latest first (``parts[0]``: its instants and candidate
    recall describe the set). A user active in several windows is a group in each."""
    latest = parts[0]
    if len(parts) == 1:
        return latest
    for part in parts[1:]:
        if (part.n_candidates, part.n_popular, part.popular_source) != (
            latest.n_candidates,
            latest.n_popular,
            latest.popular_source,
        ):
            raise ValueError("pooled examples must come from the same candidate sources")
    return replace(
        latest,
        features=np.concatenate([p.features for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        users=np.concatenate([p.users for p in parts]),
        windows=sum(p.windows for p in parts),
    )


def label_matrix(events: RankEvents, t_ms: int | np.ndarray, until_ms: int | np.ndarray) -> sp.csr_matrix:
    """users x items, int: the best label of each pair in ``[t_ms, until_ms)`` (1 watched, 2 liked); either bound
    may be one instant or one per user."""
    lo, hi = events.interactions_before(int(np.min(t_ms))), events.interactions_before(int(np.max(until_ms)))
    user = events.user[lo:hi]
    inside = (events.ts_ms[lo:hi] >= np.broadcast_to(t_ms, events.n_users)[user]) & (
        events.ts_ms[lo:hi] < np.broadcast_to(until_ms, events.n_users)[user]
    )
    user, item = user[inside], events.item[lo:hi][inside]
    grade = 1 + events.liked[lo:hi][inside].astype(np.int64)
    # Max over repeated watches: sort by grade so the last write of a pair is its best.
    order = np.argsort(grade, kind="stable")
    dense_key = user[order] * events.n_items + item[order]
    keys, last = np.unique(dense_key[::-1], return_index=True)
    best = grade[order][::-1][last]
    return sp.csr_matrix(
        (best.astype(np.int32), (keys // events.n_items, keys % events.n_items)), shape=(events.n_users, events.n_items)
    )


def example_users(
    state: AsOfState, until_ms: int, max_users: int, seed: int = 0, user_until_ms: np.ndarray | None = None
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The labels of :func:`build_examples` (users x items) and the users it builds examples of: those active in
    ``[state.t_ms, until_ms)`` (per-user bounds as it takes them), at most ``max_users`` (a seeded sample), ascending.
    """
    until = until_ms if user_until_ms is None else np.minimum(np.asarray(user_until_ms, dtype=np.int64), until_ms)
    labels = label_matrix(state.events, state.user_t_ms, until)
    active = np.flatnonzero(np.diff(labels.indptr) > 0)
    if len(active) > max_users:
        active = np.sort(np.random.default_rng(seed).choice(active, size=max_users, replace=False))
    return labels, active


def build_examples(
    view: TowerView,
    state: AsOfState,
    until_ms: int,
    n: int = DEFAULT_CANDIDATES,
    max_users: int = DEFAULT_MAX_USERS,
    seed: int = 0,
    user_until_ms: np.ndarray | None = None,
    n_popular: int = 0,
    popular_source: str = POPULAR_SOURCE,
) -> RankExamples:
    """Examples of the users active in ``[state.t_ms, until_ms)``, at most ``max_users`` of them (a seeded sample),
    over their towers' top ``n`` and the ``n_popular`` most popular videos as of t by ``popular_source``.

    With per-user cuts (a state with ``user_cut_ms``, and ``user_until_ms``: int64 per user), a user's labels are
    their rows from where their own past ends (``state.user_t_ms``) to their own ``user_until_ms``, before
    ``until_ms``."""
    labels, active = example_users(state, until_ms, max_users, seed, user_until_ms)
    feats, grades, groups, users = [], [], [], []
    reached, wanted = 0, 0
    popular = popular_items(state, n_popular, popular_source) if n_popular else None
    posted = PostedVideos.of(view.video_vectors, state.item_posted)
    for lo in range(0, len(active), BLOCK_USERS):
        block = candidate_block(view, state, active[lo : lo + BLOCK_USERS], n, popular, posted)
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
        n_popular=n_popular,
        popular_source=popular_source,
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


def as_of_split(
    towers: Towers,
    events: RankEvents,
    split: Split,
    frames: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    part: Literal["valid", "test"],
    users: Callable[[AsOfState], np.ndarray] | None = None,
) -> tuple[TowerView, AsOfState]:
    """The towers' view and the features' state for ranking ``part`` of ``split`` (:meth:`Split.cuts`): under the
    temporal protocol, as of its one instant; under leave-last-out, each user as of their own cut. With ``users``
    (the users to be ranked, chosen from the state), the view builds their histories alone.

    ``frames`` are (videos, interactions, follows) as the towers read them; ``events`` holds the same frames.
    """
    if not np.array_equal(events.user_ids, split.user_ids) or not np.array_equal(events.item_ids, split.item_ids):
        raise ValueError("events and split index users or videos differently")
    cuts = split.cuts(part)
    # One instant for everyone needs no per-user cut (and the fast path of state_at).
    user_ms = None if np.all(cuts.user_ms == cuts.t_ms) else cuts.user_ms
    state = state_at(events, cuts.t_ms, user_ms)
    chosen = None if users is None else users(state)
    return tower_view(towers, split.user_ids, *frames, cuts.t_ms, user_ms, chosen), state


def split_examples(
    towers: Towers,
    events: RankEvents,
    split: Split,
    frames: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    n: int = DEFAULT_CANDIDATES,
    max_users: int = DEFAULT_MAX_USERS,
    seed: int = 0,
    n_popular: int = 0,
    popular_source: str = POPULAR_SOURCE,
) -> RankExamples:
    """Examples on a split: towers and features as of the validation cut(s), labels from the validation part.

    Temporal: as of ``valid_start``, labels from ``[valid_start, test_start)``. Leave-last-out: each user as of their
    own validation cut, labels from their own validation rows. ``frames`` are (videos, interactions, follows) as
    the towers read them; ``events`` holds the same frames.
    """
    until = split.cuts("test").t_ms
    user_until = None if split.protocol == "temporal" else split.user_test_start_ms

    def sampled(state: AsOfState) -> np.ndarray:
        return example_users(state, until, max_users, seed, user_until)[1]

    # The towers' view builds the sampled users' histories alone: 2,000 of 100,000 users at the large scale.
    view, state = as_of_split(towers, events, split, frames, "valid", sampled)
    return build_examples(view, state, until, n, max_users, seed, user_until, n_popular, popular_source)
