"""The feed policy: turns one user's ranked candidates into the feed they see.

Both feed paths reach it through the feed pipeline's selector stage
(:class:`rec_core.feed.ordering.PolicySelector` calls :func:`select_eligible` per
user, after the pipeline's filters), so the batch (10,000s of users) and the API
(live results for one user) obey one policy. Its entry points take one user's
candidates as flat arrays and return the chosen positions, in feed order:

* :func:`apply` -- ids as strings, creation times, a ``seen`` collection; the
  whole rule set in one call, for tools and tests.
* :func:`select` -- the same rules over any comparable keys (integer codes are
  much faster) and a precomputed ``fresh`` flag.
* :func:`select_eligible` -- rules 2-4 only, for candidates the pipeline's
  filters already made unique and eligible.

Rules, all hard constraints:

1. never a video the user already watched, never the user's own videos
   (``creator_id == user_id``), never a video twice;
2. no more than ``max_per_creator_in_window`` videos of one creator in any
   ``window`` consecutive items;
3. a ``fresh_share`` of the slots is reserved for fresh videos (created within
   ``fresh_days`` before as-of), at regular positions (:meth:`FeedPolicy.fresh_slots`),
   so new content gets exposure even before it has scored; fresh videos may also
   win ordinary slots on their score, so the share is a floor, not a quota;
4. otherwise candidates keep their given (ranked) order; ties in :func:`apply`
   break by video id, so the result never depends on input order.

When candidates run out (a small catalogue), or only candidates blocked by the
creator cap remain, the feed ends early rather than break a rule: a shorter
feed is valid, a feed that repeats a creator five times in a row is not.

The selection is a greedy pass in rank order: each slot takes the best unused
candidate of its stream (the fresh ones for a fresh slot, then everyone) whose
creator is under the cap. Candidates skipped because their creator is at the cap
wait in a per-creator queue and come back as soon as the window lets them, so a
candidate is not rescanned while its creator is blocked. The pass is compiled
(:mod:`rec_core.feed.policy_kernel`, numba) and takes a whole block of users at a
time: the batch selects 10,000s of feeds, and in Python this loop alone cost as
much as the matmul and top-k that produce the candidates.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rec_core.feed.policy_kernel import greedy_block

MS_PER_DAY = 86_400_000


@dataclass(frozen=True, slots=True)
class FeedPolicy:
    feed_length: int = 500
    max_per_creator_in_window: int = 2
    window: int = 10
    fresh_share: float = 0.1
    fresh_days: float = 3.0

    def __post_init__(self) -> None:
        if self.feed_length < 1:
            raise ValueError(f"feed_length must be at least 1, got {self.feed_length}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if not 1 <= self.max_per_creator_in_window <= self.window:
            raise ValueError(
                f"max_per_creator_in_window must be in 1..window ({self.window}), got {self.max_per_creator_in_window}"
            )
        if not 0.0 <= self.fresh_share <= 1.0:
            raise ValueError(f"fresh_share must be in [0, 1], got {self.fresh_share}")
        if not (self.fresh_days >= 0.0 and math.isfinite(self.fresh_days)):
            raise ValueError(f"fresh_days must be a non-negative number, got {self.fresh_days}")

    def fresh_slots(self, n: int | None = None) -> np.ndarray:
        """Boolean mask over feed positions ``0..n-1``: True where a fresh video is reserved.

        Position ``i`` is reserved when ``round(share * (i + 1))`` steps up, so the
        slots are evenly spaced and the first comes half a period in (share 0.1:
        positions 4, 14, 24, ...): early enough to be seen, not at the very top.
        """
        n = self.feed_length if n is None else n
        i = np.arange(n + 1, dtype=np.float64)
        # floor(x + 0.5) rather than np.round: round-half-even would space the slots unevenly.
        steps = np.floor(self.fresh_share * i + 0.5)
        return np.diff(steps) > 0

    def fresh_cutoff_ms(self, as_of: dt.datetime | int) -> int:
        """Videos created at or after this time (epoch ms) are fresh."""
        as_of_ms = as_of if isinstance(as_of, int) else int(as_of.timestamp() * 1000)
        return as_of_ms - round(self.fresh_days * MS_PER_DAY)

    def is_fresh(self, created_ms: np.ndarray, as_of: dt.datetime | int) -> np.ndarray:
        """Fresh flags for creation times given as epoch milliseconds (int64)."""
        created_ms = np.asarray(created_ms, dtype=np.int64)
        as_of_ms = as_of if isinstance(as_of, int) else int(as_of.timestamp() * 1000)
        return (created_ms >= self.fresh_cutoff_ms(as_of_ms)) & (created_ms < as_of_ms)


def select(
    video_keys: np.ndarray,
    creator_keys: np.ndarray,
    fresh: np.ndarray,
    *,
    user_key: Any,
    seen_keys: np.ndarray | None,
    policy: FeedPolicy,
) -> np.ndarray:
    """Positions (into the candidate arrays) of the feed, in feed order; at most ``policy.feed_length``.

    Candidates must already be in rank order (best first). ``video_keys`` and
    ``creator_keys`` are any comparable ids (strings or integer codes), with
    ``user_key`` in the creator key space. Duplicates keep their first occurrence.
    """
    video_keys = np.asarray(video_keys)
    creator_keys = np.asarray(creator_keys)
    fresh = np.asarray(fresh, dtype=bool)
    n = len(video_keys)
    if not (len(creator_keys) == len(fresh) == n):
        raise ValueError(f"candidate arrays differ in length: {n}, {len(creator_keys)}, {len(fresh)}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keep = _first_occurrence(video_keys)
    keep &= creator_keys != user_key
    if seen_keys is not None and len(seen_keys):
        keep &= ~np.isin(video_keys, seen_keys)
    order = np.flatnonzero(keep)
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    codes, creators = np.unique(creator_keys[order], return_inverse=True)
    return order[select_eligible(creators, len(codes), fresh[order], policy)]


def select_eligible(
    creator_codes: np.ndarray,
    n_creators: int,
    fresh: np.ndarray,
    policy: FeedPolicy,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """The fast path of :func:`select` for candidates already unique and eligible (the batch filters them).

    ``creator_codes`` are dense integers in ``0..n_creators-1``; returns positions, in feed order. ``prior``: the
    creator codes of the items served just before, oldest first (see :func:`select_block`).
    """
    creator_codes = np.asarray(creator_codes, dtype=np.int64)
    keep = np.ones((1, len(creator_codes)), dtype=bool)
    prior_row = None if prior is None else np.asarray(prior, dtype=np.int64)[None, :]
    fresh_row = np.asarray(fresh, dtype=bool)[None, :]
    return select_block(creator_codes[None, :], keep, fresh_row, n_creators, policy, prior_row)[0]


def select_block(
    creator_codes: np.ndarray,
    keep: np.ndarray,
    fresh: np.ndarray,
    n_creators: int,
    policy: FeedPolicy,
    prior: np.ndarray | None = None,
) -> list[np.ndarray]:
    """:func:`select_eligible` for a block of users at once: per row of ``creator_codes`` [rows, width] (dense codes
    in ``0..n_creators-1``), the positions of the feed among the columns ``keep`` marks, in feed order.

    The candidates ``keep`` marks must be unique and eligible, as for :func:`select_eligible`. ``prior`` [rows, m]:
    per row, the creator codes of the items served just before this feed, oldest first (-1: none; only the last
    ``window - 1`` count): a page continuing a walk keeps the creator cap across the page boundary.
    """
    creator_codes = np.ascontiguousarray(creator_codes, dtype=np.int64)
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    fresh = np.ascontiguousarray(fresh, dtype=np.bool_)
    if not (creator_codes.shape == keep.shape == fresh.shape) or creator_codes.ndim != 2:
        raise ValueError(f"block arrays differ in shape: {creator_codes.shape}, {keep.shape}, {fresh.shape}")
    rows = creator_codes.shape[0]
    span = policy.window - 1
    prior = np.zeros((rows, 0), dtype=np.int64) if prior is None else np.asarray(prior, dtype=np.int64)
    prior = np.ascontiguousarray(prior[:, max(prior.shape[1] - span, 0) :])
    if prior.shape[0] != rows:
        raise ValueError(f"prior creators for {prior.shape[0]} rows, the block has {rows}")
    out = np.full((rows, policy.feed_length), -1, dtype=np.int64)
    lengths = np.zeros(rows, dtype=np.int64)
    if n_creators < 1 and keep.any():
        raise ValueError("creator codes given for a catalogue of no creators")
    if rows and creator_codes.shape[1]:
        bad_row = greedy_block(
            creator_codes,
            keep,
            fresh,
            prior,
            _slots(policy, policy.feed_length),
            policy.max_per_creator_in_window,
            span,
            max(n_creators, 1),
            out,
            lengths,
        )
        if bad_row >= 0:  # checked in the pass: a separate gather of the kept codes cost 4% of a batch shard
            raise ValueError(f"creator codes outside 0..{n_creators - 1} (row {bad_row})")
    return [out[r, : lengths[r]] for r in range(rows)]


def warm_up() -> None:
    """Compile (or load from numba's cache) the selection pass now, so no feed request pays for it."""
    select_eligible(np.zeros(1, dtype=np.int64), 1, np.zeros(1, dtype=bool), FeedPolicy(feed_length=1))


def apply(
    video_ids: Sequence[str] | np.ndarray,
    creator_ids: Sequence[str] | np.ndarray,
    created_ms: Sequence[int] | np.ndarray,
    *,
    user_id: str,
    seen: Collection[str],
    as_of: dt.datetime | int,
    policy: FeedPolicy,
    scores: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """One user's feed from candidates given by id: the positions chosen, in feed order.

    With ``scores`` the candidates are ranked by score (ties by video id);
    without, the given order is the ranking.
    """
    video_ids = np.asarray(video_ids, dtype=object).astype(str)
    creator_ids = np.asarray(creator_ids, dtype=object).astype(str)
    fresh = policy.is_fresh(np.asarray(created_ms, dtype=np.int64), as_of)
    if scores is None:
        ranking = np.arange(len(video_ids))
    else:
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(video_ids):
            raise ValueError(f"{len(scores)} scores for {len(video_ids)} candidates")
        ranking = np.lexsort((video_ids, -scores))
    seen_keys = np.asarray(sorted(seen), dtype=str) if seen else None
    picked = select(
        video_ids[ranking],
        creator_ids[ranking],
        fresh[ranking],
        user_key=str(user_id),
        seen_keys=seen_keys,
        policy=policy,
    )
    return ranking[picked]


def check_feed(creators: Sequence[Any], policy: FeedPolicy) -> list[int]:
    """Positions where the creator cap is broken (the last item of a window with too many); [] when it holds.

    For tests and validation; O(n) with a sliding window.
    """
    bad: list[int] = []
    counts: dict[Any, int] = {}
    for i, c in enumerate(creators):
        counts[c] = counts.get(c, 0) + 1
        if i >= policy.window:
            old = creators[i - policy.window]
            counts[old] -= 1
        if counts[c] > policy.max_per_creator_in_window:
            bad.append(i)
    return bad


def _slots(policy: FeedPolicy, n: int) -> np.ndarray:
    # The slot pattern only depends on (share, n); the batch asks for the same one 10,000s of times.
    return _slot_cache(policy.fresh_share, n)


@functools.lru_cache(maxsize=64)
def _slot_cache(share: float, n: int) -> np.ndarray:
    slots = FeedPolicy(feed_length=max(n, 1), fresh_share=share).fresh_slots(n)
    slots.flags.writeable = False  # shared by every caller
    return slots


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = np.zeros(len(keys), dtype=bool)
    keep[order[first]] = True
    return keep
