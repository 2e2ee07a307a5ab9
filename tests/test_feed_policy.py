"""The feed policy, candidate generation and reasons, on hand-built cases small enough to check by eye."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rec_core.feed import reasons_kernel
from rec_core.feed.candidates import ExclusionCSR, iter_top_k, top_k, trending_order, trending_scores
from rec_core.feed.policy import MS_PER_DAY, FeedPolicy, apply, check_feed, select, select_block, select_eligible
from rec_core.feed.reasons import (
    GENERIC_TAG_SHARE,
    STRONG_TAG_QUANTILE,
    TAGS_PER_VIDEO,
    Reason,
    ReasonCatalogue,
    TagIndex,
    UserSignals,
    explain,
    render,
    truncate,
)
from rec_core.feed.top_k_kernel import SAMPLE_RUN, sample_runs, top_k_rows

AS_OF = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
AS_OF_MS = int(AS_OF.timestamp() * 1000)
OLD = AS_OF_MS - 30 * MS_PER_DAY  # not fresh
NEW = AS_OF_MS - MS_PER_DAY  # fresh

NO_FRESH = FeedPolicy(feed_length=500, fresh_share=0.0)


def window_violations(creators: list, n: int, w: int) -> list[int]:
    """Brute force: start of every window of w consecutive items holding more than n of one creator."""
    bad = []
    for start in range(max(0, len(creators) - w + 1)):
        window = creators[start : start + w]
        if max(window.count(c) for c in set(window)) > n:
            bad.append(start)
    return bad


def run(videos, creators, created=None, *, user="me", seen=(), policy=NO_FRESH, scores=None):
    created = [OLD] * len(videos) if created is None else created
    idx = apply(videos, creators, created, user_id=user, seen=set(seen), as_of=AS_OF, policy=policy, scores=scores)
    return [videos[i] for i in idx]


# ---- policy validation and slots ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"feed_length": 0},
        {"window": 0},
        {"max_per_creator_in_window": 0},
        {"max_per_creator_in_window": 11, "window": 10},
        {"fresh_share": -0.1},
        {"fresh_share": 1.5},
        {"fresh_days": -1.0},
        {"fresh_days": float("nan")},
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FeedPolicy(**kwargs)


def test_fresh_slots_are_evenly_spaced_and_start_half_a_period_in() -> None:
    assert np.flatnonzero(FeedPolicy(fresh_share=0.1).fresh_slots(35)).tolist() == [4, 14, 24, 34]
    assert np.flatnonzero(FeedPolicy(fresh_share=0.25).fresh_slots(12)).tolist() == [1, 5, 9]
    assert not FeedPolicy(fresh_share=0.0).fresh_slots(100).any()
    assert FeedPolicy(fresh_share=1.0).fresh_slots(7).all()
    slots = FeedPolicy(fresh_share=0.1).fresh_slots(500)
    assert slots.sum() == 50


def test_is_fresh_uses_fresh_days_before_as_of() -> None:
    policy = FeedPolicy(fresh_days=3.0)
    created = np.array([AS_OF_MS - 4 * MS_PER_DAY, AS_OF_MS - 3 * MS_PER_DAY, AS_OF_MS - 1, AS_OF_MS, AS_OF_MS + 5])
    assert policy.is_fresh(created, AS_OF).tolist() == [False, True, True, False, False]


# ---- the rules ----------------------------------------------------------------------------------------------------


def test_creator_cap_holds_in_every_window() -> None:
    # 12 videos of creator a ranked first, then 20 of distinct creators: a must be spread out.
    videos = [f"v{i:02d}" for i in range(32)]
    creators = ["a"] * 12 + [f"c{i}" for i in range(20)]
    feed = run(videos, creators, policy=FeedPolicy(feed_length=30, fresh_share=0.0))
    got = [creators[videos.index(v)] for v in feed]
    assert window_violations(got, 2, 10) == []
    assert check_feed(got, FeedPolicy()) == []
    # Greedy: a, a, then eight others, then a again as soon as the window allows.
    assert got[:12] == ["a", "a", *[f"c{i}" for i in range(8)], "a", "a"]
    # a a + 8 others, twice, then a a + the last 4 others; the 6 a's left are blocked, so the feed ends at 26.
    assert len(feed) == 26
    assert got.count("a") == 6


def test_check_feed_finds_a_broken_window() -> None:
    assert check_feed(["a", "b", "a", "c", "a"], FeedPolicy(max_per_creator_in_window=2, window=5)) == [4]
    assert check_feed(["a", "b", "a", "c", "d", "e", "a"], FeedPolicy(max_per_creator_in_window=2, window=5)) == []


@pytest.mark.parametrize(("cap", "window"), [(1, 3), (2, 10), (3, 5), (1, 1)])
def test_creator_cap_other_settings(cap: int, window: int) -> None:
    rng = np.random.default_rng(cap * 100 + window)
    videos = [f"v{i:03d}" for i in range(200)]
    creators = [f"c{x}" for x in rng.integers(0, 6, 200)]
    policy = FeedPolicy(feed_length=150, max_per_creator_in_window=cap, window=window, fresh_share=0.0)
    got = [creators[videos.index(v)] for v in run(videos, creators, policy=policy)]
    assert window_violations(got, cap, window) == []
    assert len(got) > 0


def test_own_videos_never() -> None:
    videos = ["v1", "v2", "v3", "v4"]
    creators = ["me", "x", "me", "y"]
    assert run(videos, creators, user="me") == ["v2", "v4"]


def test_watched_videos_excluded() -> None:
    videos = ["v1", "v2", "v3", "v4"]
    creators = ["a", "b", "c", "d"]
    assert run(videos, creators, seen={"v1", "v3", "v-unknown"}) == ["v2", "v4"]


def test_duplicates_keep_their_first_place() -> None:
    assert run(["v1", "v2", "v1", "v3"], ["a", "b", "a", "c"]) == ["v1", "v2", "v3"]


def test_feed_length_truncates() -> None:
    videos = [f"v{i:03d}" for i in range(100)]
    creators = [f"c{i}" for i in range(100)]
    assert run(videos, creators, policy=FeedPolicy(feed_length=7, fresh_share=0.0)) == videos[:7]


def test_order_kept_when_no_rule_binds() -> None:
    videos = [f"v{i:03d}" for i in range(50)]
    creators = [f"c{i % 25}" for i in range(50)]  # each creator twice, 25 apart
    assert run(videos, creators) == videos


def test_fresh_share_reserved_at_regular_positions() -> None:
    # 40 old videos ranked above 10 fresh ones: the fresh ones must still get slots 4, 14, 24, 34.
    videos = [f"old{i:02d}" for i in range(40)] + [f"new{i:02d}" for i in range(10)]
    creators = [f"c{i}" for i in range(50)]
    created = [OLD] * 40 + [NEW] * 10
    policy = FeedPolicy(feed_length=40, fresh_share=0.1)
    feed = run(videos, creators, created, policy=policy)
    assert len(feed) == 40
    fresh_at = [i for i, v in enumerate(feed) if v.startswith("new")]
    assert fresh_at == [4, 14, 24, 34]
    # The best fresh ones, in their own rank order.
    assert [feed[i] for i in fresh_at] == ["new00", "new01", "new02", "new03"]
    # Everything else keeps its rank order.
    assert [v for v in feed if v.startswith("old")] == videos[:36]


def test_fresh_share_is_a_floor_not_a_quota() -> None:
    # Fresh videos that rank high keep their place; reserved slots take the next fresh ones.
    videos = ["new0", "new1", "old0", "old1", "new2", "old2", "old3", "old4", "old5", "old6"]
    creators = [f"c{i}" for i in range(10)]
    created = [NEW if v.startswith("new") else OLD for v in videos]
    feed = run(videos, creators, created, policy=FeedPolicy(feed_length=10, fresh_share=0.1))
    assert feed[:2] == ["new0", "new1"]
    assert sum(v.startswith("new") for v in feed) == 3


def test_fresh_slot_falls_back_when_no_fresh_video() -> None:
    videos = [f"v{i}" for i in range(10)]
    feed = run(videos, [f"c{i}" for i in range(10)], policy=FeedPolicy(feed_length=10, fresh_share=0.5))
    assert feed == videos


def test_fresh_slot_respects_creator_cap() -> None:
    # The only fresh video's creator already has two items in the window: the slot goes to the next regular one.
    videos = ["a1", "a2", "b1", "c1", "anew", "d1", "e1"]
    creators = ["a", "a", "b", "c", "a", "d", "e"]
    created = [OLD, OLD, OLD, OLD, NEW, OLD, OLD]
    feed = run(videos, creators, created, policy=FeedPolicy(feed_length=7, fresh_share=0.1, window=10))
    assert feed == ["a1", "a2", "b1", "c1", "d1", "e1"]
    assert window_violations([v[0] for v in feed], 2, 10) == []


def test_small_catalogue_runs_out_gracefully() -> None:
    assert run(["v1", "v2", "v3"], ["a", "b", "c"], policy=FeedPolicy(feed_length=500)) == ["v1", "v2", "v3"]
    assert run([], [], policy=FeedPolicy()) == []
    assert run(["v1"], ["me"], user="me") == []
    # One creator only: the cap allows two, then the feed ends rather than break it.
    assert run(["v1", "v2", "v3", "v4"], ["a"] * 4) == ["v1", "v2"]


def test_ties_break_by_video_id_whatever_the_input_order() -> None:
    videos = ["v3", "v1", "v4", "v2", "v0"]
    creators = ["a", "b", "c", "d", "e"]
    scores = [1.0, 1.0, 2.0, 1.0, 0.5]
    assert run(videos, creators, scores=scores) == ["v4", "v1", "v2", "v3", "v0"]
    perm = [4, 2, 0, 3, 1]
    again = run([videos[i] for i in perm], [creators[i] for i in perm], scores=[scores[i] for i in perm])
    assert again == ["v4", "v1", "v2", "v3", "v0"]


def test_select_with_integer_codes_matches_strings() -> None:
    rng = np.random.default_rng(3)
    vids = rng.permutation(300)[:200]
    creators = rng.integers(0, 15, 200)
    fresh = rng.random(200) < 0.1
    policy = FeedPolicy(feed_length=120)
    a = select(vids, creators, fresh, user_key=3, seen_keys=vids[:20], policy=policy)
    b = select(
        np.array([f"v{x:04d}" for x in vids]),
        np.array([f"c{x:02d}" for x in creators]),
        fresh,
        user_key="c03",
        seen_keys=np.array([f"v{x:04d}" for x in vids[:20]]),
        policy=policy,
    )
    assert a.tolist() == b.tolist()


def test_select_rejects_misaligned_arrays() -> None:
    with pytest.raises(ValueError):
        select(np.arange(3), np.arange(2), np.zeros(3, bool), user_key=-1, seen_keys=None, policy=FeedPolicy())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 120),
    n_creators=st.integers(1, 12),
    cap=st.integers(1, 3),
    window=st.integers(3, 12),
    share=st.sampled_from([0.0, 0.1, 0.3]),
    length=st.integers(1, 80),
    seed=st.integers(0, 10_000),
)
def test_invariants_on_random_candidates(n, n_creators, cap, window, share, length, seed) -> None:
    rng = np.random.default_rng(seed)
    videos = rng.integers(0, 150, n)  # duplicates on purpose
    creators = rng.integers(0, n_creators, 150)[videos]
    fresh = (rng.random(150) < 0.2)[videos]
    seen = rng.integers(0, 150, 10)
    policy = FeedPolicy(
        feed_length=length, max_per_creator_in_window=min(cap, window), window=window, fresh_share=share
    )
    pick = select(videos, creators, fresh, user_key=0, seen_keys=seen, policy=policy)
    got_v, got_c = videos[pick].tolist(), creators[pick].tolist()
    assert len(got_v) == len(set(got_v)) <= length
    assert not set(got_v) & set(seen.tolist())
    assert 0 not in got_c
    assert window_violations(got_c, policy.max_per_creator_in_window, window) == []
    eligible = [v for v, c in zip(videos.tolist(), creators.tolist(), strict=True) if c != 0 and v not in seen]
    if len(got_v) < length:
        # Ended early: every eligible video left is blocked by the cap at the end of the feed.
        tail = got_c[-(window - 1) :] if window > 1 else []
        for v in set(eligible) - set(got_v):
            c = int(creators[videos.tolist().index(v)])
            assert tail.count(c) >= policy.max_per_creator_in_window
    # Fresh slots hold fresh videos whenever an unused, unblocked fresh one existed: at least check the count.
    n_fresh_eligible = len({v for v in eligible if fresh[videos.tolist().index(v)]})
    if share and n_fresh_eligible == 0:
        assert not fresh[pick].any()


def test_select_eligible_fast_path_matches_select() -> None:
    rng = np.random.default_rng(5)
    creators = rng.integers(0, 40, 600)
    fresh = rng.random(600) < 0.08
    policy = FeedPolicy(feed_length=300)
    fast = select_eligible(creators, 40, fresh, policy)
    slow = select(np.arange(600), creators, fresh, user_key=-1, seen_keys=None, policy=policy)
    assert fast.tolist() == slow.tolist()


def greedy_by_definition(
    creators: list[int], fresh: list[bool], policy: FeedPolicy, prior: list[int] | None = None
) -> list[int]:
    """The policy's rule read literally, O(slots x candidates): each slot takes the lowest unused position of its
    stream (fresh ones for a fresh slot, then all) whose creator has fewer than the cap in the last window - 1
    items (the ``prior`` creators served before, then the picks); the feed ends when none is takeable."""
    slots = policy.fresh_slots(min(policy.feed_length, len(creators)))
    picked: list[int] = []

    def takeable(q: int) -> bool:
        before = [*(prior or []), *(creators[p] for p in picked)]
        recent = before[-(policy.window - 1) :] if policy.window > 1 else []
        return q not in picked and recent.count(creators[q]) < policy.max_per_creator_in_window

    for slot in slots:
        choice = next((q for q in range(len(creators)) if fresh[q] and takeable(q)), None) if slot else None
        if choice is None:
            choice = next((q for q in range(len(creators)) if takeable(q)), None)
        if choice is None:
            break
        picked.append(choice)
    return picked


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.booleans()), min_size=0, max_size=60),
        min_size=1,
        max_size=5,
    ),
    cap=st.integers(1, 3),
    window=st.integers(3, 8),
    share=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
    length=st.integers(1, 70),
)
def test_compiled_block_selection_is_the_rule_by_definition(rows, cap, window, share, length) -> None:
    """The compiled pass (a block of users at once, cells outside ``keep`` skipped) picks exactly what the rule
    read literally picks, for skewed creators, any fresh pattern and any window."""
    policy = FeedPolicy(feed_length=length, max_per_creator_in_window=cap, window=window, fresh_share=share)
    width = max(len(r) for r in rows)
    creator = np.zeros((len(rows), width), dtype=np.int64)
    keep = np.zeros((len(rows), width), dtype=bool)
    fresh = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        for j, (c, k, f) in enumerate(row):
            creator[i, j], keep[i, j], fresh[i, j] = c, k, f
    got = select_block(creator, keep, fresh, 7, policy)
    for i in range(len(rows)):
        ok = np.flatnonzero(keep[i])
        want = greedy_by_definition(creator[i, ok].tolist(), fresh[i, ok].tolist(), policy)
        assert got[i].tolist() == ok[want].tolist()
        assert select_eligible(creator[i, ok], 7, fresh[i, ok], policy).tolist() == want


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=0, max_size=40),
            st.lists(st.integers(-1, 5), min_size=0, max_size=12),
        ),
        min_size=1,
        max_size=4,
    ),
    cap=st.integers(1, 3),
    window=st.integers(1, 8),
    share=st.sampled_from([0.0, 0.1, 0.5]),
    length=st.integers(1, 50),
)
def test_the_items_served_before_count_in_the_first_windows(rows, cap, window, share, length) -> None:
    """A page continuing a walk: the creators of the items before it (``prior``, of any length; -1 for none) count
    toward the cap exactly as if they had been picked first, as the rule read literally says."""
    cap = min(cap, window)
    policy = FeedPolicy(feed_length=length, max_per_creator_in_window=cap, window=window, fresh_share=share)
    width = max(1, *(len(r) for r, _ in rows))
    longest = max(len(p) for _, p in rows)
    creator = np.zeros((len(rows), width), dtype=np.int64)
    keep = np.zeros((len(rows), width), dtype=bool)
    fresh = np.zeros((len(rows), width), dtype=bool)
    prior = np.full((len(rows), longest), -1, dtype=np.int64)
    for i, (row, before) in enumerate(rows):
        for j, (c, f) in enumerate(row):
            creator[i, j], keep[i, j], fresh[i, j] = c, True, f
        prior[i, longest - len(before) :] = before  # right-aligned: the newest item last
    got = select_block(creator, keep, fresh, 6, policy, prior)
    for i, (row, _) in enumerate(rows):
        n = len(row)
        # A -1 is a place with no item: for the rule read literally, a creator of its own that no candidate has.
        before = [c if c >= 0 else -1 - k for k, c in enumerate(prior[i].tolist())]
        want = greedy_by_definition(creator[i, :n].tolist(), fresh[i, :n].tolist(), policy, before)
        assert got[i].tolist() == want
        walk = [*before, *creator[i, :n][want].tolist()]
        assert [p for p in check_feed(walk, policy) if p >= len(before)] == []


def test_block_selection_refuses_creator_codes_outside_the_range() -> None:
    creator = np.array([[0, 5]])
    with pytest.raises(ValueError, match=r"creator codes outside 0\.\.4"):
        select_block(creator, np.ones((1, 2), dtype=bool), np.zeros((1, 2), dtype=bool), 5, FeedPolicy())
    # A cell outside keep may hold anything: the batch leaves filtered cells' codes as they were.
    picked = select_block(creator, np.array([[True, False]]), np.zeros((1, 2), dtype=bool), 5, FeedPolicy())
    assert picked[0].tolist() == [0]


# ---- candidates ---------------------------------------------------------------------------------------------------


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_top_k_is_exact_and_excludes_seen() -> None:
    rng = np.random.default_rng(0)
    users, videos = _unit(rng, 37, 8), _unit(rng, 200, 8)
    seen_u = rng.integers(0, 37, 400)
    seen_v = rng.integers(0, 200, 400)
    exclude = ExclusionCSR.from_pairs(seen_u, seen_v, 37)
    idx, scores = top_k(users, videos, 15, exclude=exclude, batch_size=8)
    full = users @ videos.T
    full[seen_u, seen_v] = -np.inf
    for u in range(37):
        want = np.lexsort((np.arange(200), -full[u]))[:15]
        assert idx[u].tolist() == want.tolist()
        assert not set(idx[u].tolist()) & set(seen_v[seen_u == u].tolist())
        np.testing.assert_allclose(scores[u], full[u, want], rtol=1e-5, atol=1e-6)


def test_top_k_marks_missing_when_too_few_videos_remain() -> None:
    rng = np.random.default_rng(1)
    users, videos = _unit(rng, 2, 4), _unit(rng, 5, 4)
    exclude = ExclusionCSR.from_pairs(np.array([0, 0, 0]), np.array([1, 2, 3]), 2)
    idx, scores = top_k(users, videos, 4, exclude=exclude)
    assert sorted(idx[0][:2].tolist()) == [0, 4]
    assert idx[0][2:].tolist() == [-1, -1]
    assert np.isneginf(scores[0][2:]).all()
    assert (idx[1] >= 0).all()


def test_top_k_ties_break_by_lower_index() -> None:
    users = np.ones((1, 2), dtype=np.float32)
    videos = np.array([[1, 0], [0, 1], [2, 0], [1, 0], [0, 1]], dtype=np.float32)  # scores 1, 1, 2, 1, 1
    idx, _ = top_k(users, videos, 5)
    assert idx[0].tolist() == [2, 0, 1, 3, 4]


@pytest.mark.parametrize("k", [1, 40, 1500])
def test_compiled_selection_is_exact_at_catalogue_width(k: int) -> None:
    """The threshold path (rows far wider than the sample) against a full stable sort, including rows that defeat
    the sample: ties across the k-th place, a row whose best values all sit between the sampled runs, and rows
    with fewer than k finite scores, which must fall back to a full selection and still be exact."""
    rng = np.random.default_rng(7)
    n = 60_000
    scores = rng.standard_normal((12, n)).astype(np.float32)
    scores[1] = np.round(scores[1], 1)  # a few dozen distinct values: ties everywhere, the k-th place included
    scores[2] = 0.25  # every value tied
    scores[3, : n - k // 2] = -np.inf  # fewer than k finite scores
    scores[4] = -np.inf
    step = n // sample_runs(n, k)  # row 5: the best 3k values all lie outside the sampled runs
    outside = np.flatnonzero(np.arange(n) % step >= SAMPLE_RUN)[: 3 * k]
    scores[5] = -1.0
    scores[5, outside] = rng.uniform(1, 2, len(outside)).astype(np.float32)
    zeros = rng.choice(n, 2000, replace=False)  # row 6: the best are 0.0 and -0.0, equal, so in index order
    scores[6] = -1.0
    scores[6, zeros] = np.where(rng.random(2000) < 0.5, 0.0, -0.0).astype(np.float32)
    # Row 7: NaN counts as -inf, even at the head of a scanned block that holds the row's best (outside the sample).
    heads = np.flatnonzero((np.arange(n) % 16 == 0) & (np.arange(n) % step >= SAMPLE_RUN + 16))
    scores[7, heads] = np.nan
    scores[7, heads[5] + 3] = 9.0
    indices, values, full_rows = top_k_rows(scores, k)
    as_ranked = np.where(np.isnan(scores), -np.inf, scores)
    for r in range(len(scores)):
        want = np.lexsort((np.arange(n), -as_ranked[r]))[:k]
        assert indices[r].tolist() == want.tolist(), r
        assert np.array_equal(values[r], as_ranked[r, want])
    assert indices[7, 0] == heads[5] + 3
    assert full_rows == 5  # rows 2 (all tied: every value passes), 3, 4, 5 and 6; never the random rows, nor row 1


def test_compiled_selection_refuses_what_it_cannot_select() -> None:
    with pytest.raises(ValueError, match="k=6 for rows of 5"):
        top_k_rows(np.zeros((2, 5), dtype=np.float32), 6)
    indices, values, full_rows = top_k_rows(np.zeros((0, 5), dtype=np.float32), 3)
    assert indices.shape == values.shape == (0, 3) and full_rows == 0


def test_top_k_subsets_map_back_to_full_indices() -> None:
    rng = np.random.default_rng(2)
    users, videos = _unit(rng, 4, 6), _unit(rng, 50, 6)
    subset = np.array([3, 7, 11, 40, 41])
    exclude = ExclusionCSR.from_pairs(np.array([0]), np.array([7]), 4)
    (batch,) = list(iter_top_k(users, videos, 10, exclude=exclude, subsets=[(subset, 3)]))
    sub_idx, _ = batch.subsets[0]
    full = users @ videos.T
    full[0, 7] = -np.inf
    for u in range(4):
        want = subset[np.lexsort((subset, -full[u, subset]))][:3]
        assert sub_idx[u].tolist() == want.tolist()
    assert 7 not in sub_idx[0].tolist()


def test_exclusion_csr_take_is_the_rows_asked_for() -> None:
    rng = np.random.default_rng(3)
    csr = ExclusionCSR.from_pairs(rng.integers(0, 50, 2000), rng.integers(0, 300, 2000), 50)
    users = np.array([7, 0, 49, 7, 12, 3])  # any order, repeats allowed
    rows = csr.take(users)
    assert rows.n_users == len(users)
    for r, u in enumerate(users):
        assert rows.row(r).tolist() == csr.row(int(u)).tolist()
    assert csr.take(np.zeros(0, dtype=np.int64)).n_users == 0


def test_exclusion_csr_dedupes_and_rejects_bad_rows() -> None:
    csr = ExclusionCSR.from_pairs(np.array([1, 1, 0, 1]), np.array([5, 2, 3, 5]), 3)
    assert csr.row(0).tolist() == [3]
    assert csr.row(1).tolist() == [2, 5]
    assert csr.row(2).tolist() == []
    with pytest.raises(ValueError):
        ExclusionCSR.from_pairs(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="negative"):
        ExclusionCSR.from_pairs(np.array([0]), np.array([-1]), 3)


def test_trending_scores_decay_and_window() -> None:
    day = MS_PER_DAY
    video = np.array([0, 1, 1, 2, 3])
    ts = np.array([AS_OF_MS - day, AS_OF_MS - 3 * day, AS_OF_MS - 3 * day, AS_OF_MS - 20 * day, AS_OF_MS + 1])
    zeros = np.zeros(5)
    score = trending_scores(video, ts, zeros, zeros, zeros, zeros, n_videos=5, as_of_ms=AS_OF_MS, half_life_days=2.0)
    assert score[0] == pytest.approx(2 ** (-0.5))
    assert score[1] == pytest.approx(2 * 2 ** (-1.5))
    assert score[2] == 0.0  # older than the window
    assert score[3] == 0.0  # after as-of
    liked = trending_scores(
        video[:1], ts[:1], np.ones(1), np.ones(1), np.zeros(1), np.zeros(1), n_videos=1, as_of_ms=AS_OF_MS
    )
    assert liked[0] > score[0]
    order = trending_order(np.array([1.0, 3.0, 1.0, 0.0]), np.array([10, 10, 20, 30]))
    assert order.tolist() == [1, 2, 0, 3]


# ---- reasons ------------------------------------------------------------------------------------------------------


def test_truncate() -> None:
    assert truncate("short caption") == "short caption"
    long = "a fairly long caption about baking sourdough bread at home with friends"
    out = truncate(long, 40)
    assert out.endswith("…") and len(out) <= 41 and long.startswith(out[:-1])
    assert truncate("x" * 60, 10) == "x" * 10 + "…"


def test_tag_index_drops_generic_tags_and_orders_common_first() -> None:
    hashtags = [["fyp", "baking", "bread"], ["fyp", "baking"], ["fyp", "dogs"], ["cats", "fyp"]] + [[]] * 16
    pop = np.array([5.0, 1.0, 2.0, 0.0] + [0.0] * 16)
    tags = TagIndex.build(hashtags, pop)
    assert "fyp" not in tags.names  # on 20% of videos: generic
    names = [[tags.names[t] for t in row if t >= 0] for row in tags.video_tags[:4]]
    assert names == [["baking", "bread"], ["baking"], ["dogs"], ["cats"]]
    # Video 0 is the stronger of the two #baking videos; video 3 has no popularity at all.
    assert tags.strong[0, 0] and not tags.strong[1, 0]
    assert not tags.strong[3].any()


_TAGS = st.sampled_from(["fyp", "baking", "Bread", "bread", "été", "éte", "日本", "z", "", None])


@settings(max_examples=60, deadline=None)
@given(
    hashtags=st.lists(st.one_of(st.none(), st.lists(_TAGS, max_size=6)), max_size=40),
    seed=st.integers(0, 2**31 - 1),
)
def test_tag_index_is_the_rule_written_plainly(hashtags: list[list[str | None] | None], seed: int) -> None:
    """The index (built in polars) against its rule with sets and sorts: specific tags only (on at most the generic
    share of videos, counted once per video), names in code-point order, each video's most common tags first (ties
    by name), strong where its popularity reaches the tag's quantile and is above zero; lists or a Series alike."""
    n = len(hashtags)
    pop = np.round(np.random.default_rng(seed).random(n) * 4) / 2  # ties and zeros
    tags_of = [sorted({t for t in (tags or []) if t}) for tags in hashtags]
    df = Counter(t for tags in tags_of for t in tags)
    names = sorted(t for t, c in df.items() if c <= max(1.0, GENERIC_TAG_SHARE * n))
    threshold = {}
    for name in names:
        pops = sorted(pop[v] for v in range(n) if name in tags_of[v])
        threshold[name] = pops[int(np.ceil(STRONG_TAG_QUANTILE * (len(pops) - 1)))]
    for built in (
        TagIndex.build([list(t) if t is not None else None for t in hashtags], pop),
        TagIndex.build(pl.Series(hashtags, dtype=pl.List(pl.String)), pop),
    ):
        assert built.names == names
        for v in range(n):
            expected = sorted((t for t in tags_of[v] if t in threshold), key=lambda t: (-df[t], t))[:TAGS_PER_VIDEO]
            row = [built.names[c] for c in built.video_tags[v] if c >= 0] if built.video_tags.shape[1] else []
            assert row == expected
            strong = [bool(built.strong[v, i]) for i in range(len(row))]
            assert strong == [bool(pop[v] >= threshold[t] and pop[v] > 0) for t in expected]


def _reason_fixture():
    # 6 videos by creators c0..c2 plus 40 untagged fillers (so #baking on 3 videos is not "generic");
    # user 0 follows c1, liked video 0, engages with #baking.
    n = 46
    vectors = np.eye(n, 4, dtype=np.float32)
    vectors[5] = vectors[0]  # video 5 is a twin of the liked video 0
    hashtags = [["baking"], ["dogs"], ["baking"], ["cats"], ["baking"], ["news"]] + [[]] * 40
    popularity = np.array([1.0, 1.0, 0.5, 1.0, 9.0, 0.0] + [0.0] * 40)
    tags = TagIndex.build(hashtags, popularity)
    catalogue = ReasonCatalogue(
        captions=pa.array(["sourdough at home", "dog", "cake", "cat", "pie", "twin"] + ["filler"] * 40),
        creator_codes=np.array([0, 1, 2, 2, 0, 0] + [2] * 40),
        creator_ids=np.array(["u-c0", "u-c1", "u-c2"]),
        tags=tags,
        popular=np.array([False, False, False, True, False, False] + [False] * 40),
        unit_vectors=vectors,
        like_threshold=0.9,
    )
    baking = tags.names.index("baking")
    users = UserSignals(
        n_users=1,
        follow_keys=np.array([0 * 3 + 1]),
        followed_like_keys=np.array([0 * n + 2]),
        liked_indptr=np.array([0, 1]),
        liked=np.array([0]),
        top_tags=np.array([[baking, -1, -1]]),
        has_history=np.array([True]),
    )
    return catalogue, users


def test_explain_picks_the_first_rule_that_holds() -> None:
    catalogue, users = _reason_fixture()
    videos = np.array([1, 5, 2, 4, 3, 0, 1, 10])
    fresh_slot = np.array([False] * 6 + [True, False])
    kinds, args = explain(catalogue, users, np.zeros(8, dtype=np.int64), videos, fresh_slot)
    assert [Reason(k) for k in kinds] == [
        Reason.FOLLOWED,  # creator c1 is followed
        Reason.LIKED,  # twin of the liked video
        Reason.FOLLOWED_POPULAR,  # liked by a followed creator
        Reason.TAG,  # among the most popular of #baking, which the user engages with
        Reason.POPULAR,  # in the trending list
        Reason.FOR_YOU,  # the liked video itself is never its own "because you liked"; not strong in #baking
        Reason.NEW_FOLLOWED,  # a fresh slot, by a followed creator
        Reason.FOR_YOU,  # nothing else holds
    ]
    text = render(kinds, args, catalogue).to_pylist()
    assert text == [
        "from @u-c1 you follow",
        'because you liked "sourdough at home"',
        "popular with creators you follow",
        "trending in #baking",
        "popular right now",
        "based on what you watch",
        "new from @u-c1 you follow",
        "based on what you watch",
    ]


def test_explain_new_from_tag_and_fallbacks() -> None:
    catalogue, users = _reason_fixture()
    users = dataclasses.replace(users, follow_keys=np.zeros(0, dtype=np.int64))
    kinds, args = explain(
        catalogue,
        users,
        np.zeros(4, dtype=np.int64),
        np.array([2, 3, 10, 1]),
        np.array([1, 1, 1, 0], bool),
    )
    assert render(kinds, args, catalogue).to_pylist() == [
        "new from #baking",
        "new from #cats",
        "new for you",  # a fresh slot, but the video has no tag
        "based on what you watch",
    ]
    cold = dataclasses.replace(users, has_history=np.array([False]), followed_like_keys=np.zeros(0, dtype=np.int64))
    kinds, args = explain(catalogue, cold, np.zeros(1, dtype=np.int64), np.array([1]), np.zeros(1, bool))
    assert render(kinds, args, catalogue).to_pylist() == ["popular right now"]


def _explain_plainly(cat: ReasonCatalogue, users: UserSignals, u: int, v: int, fresh: bool) -> tuple[Reason, int]:
    """The rules of rec_core.feed.reasons, first that holds, read literally for one row."""
    n_creators, n_videos = len(cat.creator_ids), len(cat.creator_codes)
    creator = int(cat.creator_codes[v])
    followed = u * n_creators + creator in set(users.follow_keys.tolist())
    likes = users.liked[users.liked_indptr[u] : users.liked_indptr[u + 1]].tolist()
    sims = [float(cat.unit_vectors[v] @ cat.unit_vectors[j]) for j in likes]
    like = likes[int(np.argmax(sims))] if likes else -1  # the first of the best, never the video itself
    liked = like >= 0 and like != v and max(sims) >= cat.like_threshold
    mine = [int(t) for t in cat.tags.video_tags[v] if t >= 0 and t in users.top_tags[u].tolist()]
    strong = [int(t) for t, s in zip(cat.tags.video_tags[v], cat.tags.strong[v], strict=True) if s and int(t) in mine]
    first_tag = int(cat.tags.video_tags[v][0]) if cat.tags.video_tags.shape[1] else -1
    new_tag = mine[0] if mine else first_tag
    if fresh and followed:
        return Reason.NEW_FOLLOWED, creator
    if fresh:
        return (Reason.NEW_TAG, new_tag) if new_tag >= 0 else (Reason.NEW, 0)
    if followed:
        return Reason.FOLLOWED, creator
    if liked:
        return Reason.LIKED, like
    if u * n_videos + v in set(users.followed_like_keys.tolist()):
        return Reason.FOLLOWED_POPULAR, 0
    if strong:
        return Reason.TAG, strong[0]
    if cat.popular[v] or not users.has_history[u]:
        return Reason.POPULAR, 0
    return Reason.FOR_YOU, 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 5),
    n_videos=st.integers(1, 15),
    n_creators=st.integers(1, 4),
    width=st.integers(0, 3),
)
def test_explain_is_the_rules_read_plainly(seed: int, n_users: int, n_videos: int, n_creators: int, width: int) -> None:
    """The compiled pass against the rules read row by row: rows in any user order (each user's keys are looked up
    again when the user changes), few distinct vectors (ties between likes, a liked video among the rows), tags
    padded with -1 on both sides, every rule reachable."""
    rng = np.random.default_rng(seed)
    video_tags = np.where(rng.random((n_videos, width)) < 0.7, rng.integers(0, 5, (n_videos, width)), -1)
    cat = ReasonCatalogue(
        captions=pa.array([f"v{i}" for i in range(n_videos)]),
        creator_codes=rng.integers(0, n_creators, n_videos),
        creator_ids=np.array([f"c{i}" for i in range(n_creators)]),
        tags=TagIndex([f"t{i}" for i in range(5)], video_tags, rng.random((n_videos, width)) < 0.5),
        popular=rng.random(n_videos) < 0.3,
        unit_vectors=np.eye(4, dtype=np.float32)[rng.integers(0, 4, n_videos)],
        like_threshold=0.5,
    )
    counts = rng.integers(0, 4, n_users)
    follows = np.unique(rng.integers(0, n_users * n_creators, rng.integers(0, 2 * n_users + 1)))
    users = UserSignals(
        n_users=n_users,
        follow_keys=follows,
        followed_like_keys=np.unique(rng.integers(0, n_users * n_videos, rng.integers(0, 3 * n_users + 1))),
        liked_indptr=np.concatenate([[0], np.cumsum(counts)]),
        liked=rng.integers(0, n_videos, int(counts.sum())),
        top_tags=np.where(rng.random((n_users, 3)) < 0.6, rng.integers(0, 5, (n_users, 3)), -1),
        has_history=rng.random(n_users) < 0.8,
    )
    row_user, row_video = rng.integers(0, n_users, 40), rng.integers(0, n_videos, 40)
    fresh = rng.random(40) < 0.3
    kinds, args = explain(cat, users, row_user, row_video, fresh)
    for i in range(40):
        want = _explain_plainly(cat, users, int(row_user[i]), int(row_video[i]), bool(fresh[i]))
        assert (Reason(kinds[i]), int(args[i])) == want, i


def test_explain_refuses_rows_outside_its_arrays() -> None:
    catalogue, users = _reason_fixture()
    one = np.zeros(1, dtype=np.int64)
    no = np.zeros(1, dtype=bool)
    with pytest.raises(ValueError, match="row videos"):
        explain(catalogue, users, one, np.array([46]), no)
    with pytest.raises(ValueError, match="row users"):
        explain(catalogue, users, np.array([1]), one, no)
    with pytest.raises(ValueError, match="liked videos"):
        explain(catalogue, dataclasses.replace(users, liked=np.array([99])), one, one, no)
    with pytest.raises(ValueError, match="index past the likes"):
        explain(catalogue, dataclasses.replace(users, liked_indptr=np.array([0, 2])), one, one, no)
    with pytest.raises(ValueError, match="users long"):
        explain(catalogue, dataclasses.replace(users, has_history=np.zeros(0, dtype=bool)), one, one, no)
    with pytest.raises(ValueError, match="videos long"):
        explain(dataclasses.replace(catalogue, unit_vectors=catalogue.unit_vectors[:3]), users, one, one, no)


def test_the_compiled_kinds_are_the_reasons() -> None:
    k = reasons_kernel
    compiled = [k.NEW_FOLLOWED, k.NEW_TAG, k.NEW, k.FOLLOWED, k.LIKED, k.FOLLOWED_POPULAR, k.TAG, k.POPULAR, k.FOR_YOU]
    assert compiled == [int(r) for r in Reason if r is not Reason.TRENDING]


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40)), max_size=60))
def test_exclusion_csr_rows_are_each_users_sorted_distinct_videos(pairs: list[tuple[int, int]]) -> None:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    videos = np.array([v for _, v in pairs], dtype=np.int64)
    csr = ExclusionCSR.from_pairs(users, videos, 7)
    for u in range(7):
        assert csr.row(u).tolist() == sorted({v for w, v in pairs if w == u})
