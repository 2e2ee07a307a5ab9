"""Ranking metrics on cases small enough to compute by hand, kept per user, and their bootstrap intervals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from rec_core.data.split import Split, temporal_split
from rec_core.eval.intervals import bootstrap_means, difference, intervals, metric_intervals, paired_difference
from rec_core.eval.ranking_metrics import (
    ServedAs,
    TopScorer,
    build_targets,
    cold_ranks,
    evaluate_scores,
    first_not_in,
    in_rows,
    user_metrics,
)
from rec_core.feed.policy import FeedPolicy

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
VIDEOS = ["a", "b", "c", "d", "e"]
LOG2_3, LOG2_4, LOG2_5 = math.log2(3), math.log2(4), math.log2(5)


def make_split(train: list[tuple[str, str]], test: list[tuple[str, str]], videos: list[str] = VIDEOS) -> Split:
    """Train rows on day 0, test rows on day 10; one cut at day 5 (no validation period)."""
    rows = [(u, v, T0) for u, v in train] + [(u, v, T0 + dt.timedelta(days=10)) for u, v in test]
    interactions = pl.DataFrame(
        {"user_id": [r[0] for r in rows], "video_id": [r[1] for r in rows], "ts": [r[2] for r in rows]}
    )
    cut = T0 + dt.timedelta(days=5)
    return temporal_split(interactions, pl.DataFrame({"video_id": videos}), valid_start=cut, test_start=cut)


def fixed(scores: dict[str, list[float]], split: Split) -> Callable[[np.ndarray], torch.Tensor]:
    """A scorer that returns a fixed row per user (users not listed score 0 everywhere)."""
    table = torch.tensor([scores.get(u, [0.0] * split.n_items) for u in split.user_ids], dtype=torch.float32)
    return lambda users: table[torch.as_tensor(users)]


def test_two_users_by_hand() -> None:
    # u1: trained on a; test targets b, d. u2: trained on b; test target a and e.
    split = make_split([("u1", "a"), ("u2", "b")], [("u1", "b"), ("u1", "d"), ("u2", "a"), ("u2", "e")])
    score = fixed(
        {
            # after masking a: c .9, b .8, e .5, d .1  -> hits at ranks 2 and 4
            "u1": [10.0, 0.8, 0.9, 0.1, 0.5],
            # after masking b: a .7, e .6, c .3, d .2  -> hits at ranks 1 and 2
            "u2": [0.7, 10.0, 0.3, 0.2, 0.6],
        },
        split,
    )
    m = evaluate_scores(score, split, ks=(1, 2, 4))
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((0 + 1 / 2) / 2)
    assert m["hit_rate@1"] == pytest.approx(1 / 2)
    assert m["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert m["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["hit_rate@2"] == 1.0
    idcg2 = 1 + 1 / LOG2_3
    assert m["ndcg@2"] == pytest.approx(((1 / LOG2_3) / idcg2 + 1.0) / 2)
    assert m["recall@4"] == 1.0
    assert m["ndcg@4"] == pytest.approx(((1 / LOG2_3 + 1 / LOG2_5) / idcg2 + 1.0) / 2)
    # top-1: c (u1), a (u2); top-2 adds b, e; top-4 covers every unmasked item: a..e.
    assert (m["coverage@1"], m["coverage@2"], m["coverage@4"]) == pytest.approx((2 / 5, 4 / 5, 5 / 5))


def test_training_items_are_masked_and_are_not_targets() -> None:
    # u1 re-watches a (a training item) in test: it is neither ranked nor counted as relevant.
    split = make_split([("u1", "a")], [("u1", "a"), ("u1", "c")])
    m = evaluate_scores(fixed({"u1": [100.0, 0.0, 1.0, 0.0, 0.0]}, split), split, ks=(1,))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0
    assert m["coverage@1"] == pytest.approx(1 / 5)  # c only: the masked a never counts


def test_user_whose_only_target_was_trained_on_is_not_evaluated() -> None:
    split = make_split([("u1", "a"), ("u2", "a")], [("u1", "a"), ("u2", "b")])
    m = evaluate_scores(fixed({}, split), split, ks=(1,))
    assert m["users"] == 1


def test_ndcg_ideal_is_over_min_relevant_and_k() -> None:
    # Three targets, K=2: both top slots hit -> NDCG@2 = 1 though recall@2 = 2/3.
    split = make_split([("u1", "a")], [("u1", "b"), ("u1", "c"), ("u1", "d")])
    m = evaluate_scores(fixed({"u1": [0.0, 0.9, 0.8, 0.1, 0.5]}, split), split, ks=(2, 3))
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 3)
    # K=3: ranking b, c, e -> DCG = 1 + 1/log2(3); IDCG = 1 + 1/log2(3) + 1/log2(4).
    assert m["ndcg@3"] == pytest.approx((1 + 1 / LOG2_3) / (1 + 1 / LOG2_3 + 1 / LOG2_4))


def test_ties_among_non_relevant_items_do_not_matter() -> None:
    split = make_split([("u1", "a")], [("u1", "e")])
    # b, c, d tie behind e: whichever order topk picks, e is first and the metrics are fixed.
    m = evaluate_scores(fixed({"u1": [0.0, 0.5, 0.5, 0.5, 0.9]}, split), split, ks=(1, 3))
    assert m["recall@1"] == 1.0 and m["ndcg@3"] == 1.0
    assert m["coverage@3"] == pytest.approx(3 / 5)  # e plus two of the three tied items


def test_cold_recall_counts_only_items_without_training_interactions() -> None:
    # Training: u2-a, u1-c; cold items: b, d, e. u1's targets: a (warm) and b (cold).
    split = make_split([("u2", "a"), ("u1", "c")], [("u1", "a"), ("u1", "b")])
    assert set(split.item_ids[split.cold_item_mask]) == {"b", "d", "e"}
    m = evaluate_scores(fixed({"u1": [0.0, 1.0, 0.0, 0.0, 0.0]}, split), split, ks=(1,))
    assert m["cold_users"] == 1
    assert m["cold_recall@1"] == 1.0  # the one cold target, b, is ranked first
    assert m["recall@1"] == pytest.approx(0.5)
    m = evaluate_scores(fixed({"u1": [1.0, 0.0, 0.0, 0.0, 0.0]}, split), split, ks=(1,))
    assert m["cold_recall@1"] == 0.0 and m["recall@1"] == pytest.approx(0.5)


def test_cold_recall_is_nan_without_cold_targets() -> None:
    split = make_split([("u1", "a"), ("u2", "b")], [("u1", "b")])
    m = evaluate_scores(fixed({}, split), split, ks=(1,))
    assert m["cold_users"] == 0 and math.isnan(m["cold_recall@1"])


def test_minus_inf_and_nan_scores_never_count() -> None:
    split = make_split([("u1", "a")], [("u1", "b")])
    inf = float("-inf")
    m = evaluate_scores(fixed({"u1": [0.0, inf, inf, inf, inf]}, split), split, ks=(4,))
    assert m["recall@4"] == 0.0 and m["coverage@4"] == 0.0
    m = evaluate_scores(fixed({"u1": [0.0, math.nan, 1.0, inf, inf]}, split), split, ks=(4,))
    assert m["recall@4"] == 0.0 and m["coverage@4"] == pytest.approx(1 / 5)


def test_populations_warm_and_cold_users() -> None:
    # u1 has training history; u3 is new in the test period.
    split = make_split([("u1", "a")], [("u1", "b"), ("u3", "c")])
    score = fixed({"u1": [0.0, 1.0, 0.0, 0.0, 0.0], "u3": [0.0, 1.0, 0.0, 0.0, 0.0]}, split)
    assert evaluate_scores(score, split, ks=(1,))["recall@1"] == pytest.approx(0.5)
    warm = evaluate_scores(score, split, ks=(1,), population="warm")
    cold = evaluate_scores(score, split, ks=(1,), population="cold")
    assert (warm["users"], warm["recall@1"]) == (1, 1.0)
    assert (cold["users"], cold["recall@1"]) == (1, 0.0)


def test_batching_numpy_scores_and_no_mutation() -> None:
    rng = np.random.default_rng(0)
    train = [(f"u{u}", v) for u in range(30) for v in rng.choice(VIDEOS, size=2, replace=False)]
    test = [(f"u{u}", v) for u in range(30) for v in rng.choice(VIDEOS, size=2, replace=False)]
    split = make_split(train, test)
    table = rng.standard_normal((split.n_users, split.n_items))  # float64 numpy
    before = table.copy()
    one = evaluate_scores(lambda users: table[users], split, ks=(1, 3), batch_size=1)
    many = evaluate_scores(lambda users: table[users], split, ks=(1, 3), batch_size=7)
    assert one == pytest.approx(many, nan_ok=True)
    assert np.array_equal(table, before)
    # An expanded (read-only) view is accepted too, as MostPop returns.
    row = torch.arange(split.n_items, dtype=torch.float32)
    evaluate_scores(lambda users: row.expand(len(users), -1), split, ks=(1,))


def test_targets_and_errors() -> None:
    split = make_split([("u1", "a")], [("u1", "b")])
    targets = build_targets(split, "test")
    assert targets.users.tolist() == [0] and targets.relevant.toarray().tolist() == [[0, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda users: np.zeros((len(users), 3)), split)
    with pytest.raises(ValueError, match="valid"):
        evaluate_scores(lambda users: np.zeros((len(users), 5)), split, on="train")
    with pytest.raises(ValueError, match="ks"):
        evaluate_scores(lambda users: np.zeros((len(users), 5)), split, ks=(0,))


def test_served_rankings_fill_the_fresh_slots_by_hand() -> None:
    # a..d were trained on (warm); e and f appear only later (cold: the fresh ones as served).
    videos = [*VIDEOS, "f"]
    split = make_split([("u1", "a"), ("u2", "b"), ("u3", "c"), ("u3", "d")], [("u1", "f")], videos=videos)
    assert list(split.cold_item_mask) == [False, False, False, False, True, True]
    score = fixed({"u1": [1.0, 0.9, 0.8, 0.7, 0.5, 0.6]}, split)  # after masking a: b c d f e
    # fresh_share 0.5 reserves positions 0 and 2 (round(0.5 * (i + 1)) steps up at i = 0 and i = 2).
    served = ServedAs(FeedPolicy(fresh_share=0.5), split.cold_item_mask, np.arange(len(videos)))
    plain = evaluate_scores(score, split, ks=(3,))
    fed = evaluate_scores(score, split, ks=(3,), served=served)
    assert plain["recall@3"] == 0.0  # b c d
    assert fed["recall@3"] == 1.0 and fed["ndcg@3"] == 1.0  # f (best fresh) b e (next fresh)
    assert fed["cold_recall@3"] == 1.0


def test_served_rankings_respect_the_creator_cap() -> None:
    split = make_split([("u1", "a")], [("u1", "e")])
    score = fixed({"u1": [1.0, 0.9, 0.8, 0.7, 0.6]}, split)  # after masking a: b c d e
    creators = np.array([0, 1, 1, 1, 2])  # b, c, d share a creator: at most 2 of them in any 10
    served = ServedAs(FeedPolicy(fresh_share=0.0), np.zeros(5, dtype=bool), creators)
    assert evaluate_scores(score, split, ks=(3,))["recall@3"] == 0.0  # b c d
    assert evaluate_scores(score, split, ks=(3,), served=served)["recall@3"] == 1.0  # b c e


class Listed:
    """A scorer that also hands over its own top k (a TopScorer): ``lists`` per user, or a wrong list on purpose."""

    def __init__(self, score: Callable[[np.ndarray], torch.Tensor], lists: np.ndarray) -> None:
        self.score, self.lists, self.tops, self.full = score, lists, 0, 0

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        self.full += 1
        return self.score(users)

    def top(self, users: np.ndarray, k: int) -> np.ndarray | None:
        self.tops += 1
        return self.lists[users, :k] if self.lists.shape[1] >= k else None


def test_a_scorers_own_top_is_used_only_when_it_is_what_the_full_ranking_gives() -> None:
    split = make_split([("u1", "a"), ("u2", "b")], [("u1", "b"), ("u1", "d"), ("u2", "a"), ("u2", "e")])
    score = fixed({"u1": [10.0, 0.8, 0.9, 0.1, 0.5], "u2": [0.7, 10.0, 0.3, 0.2, 0.6]}, split)
    full = user_metrics(score, build_targets(split), ks=(1, 2))
    idx = {v: i for i, v in enumerate(split.item_ids)}
    order = {"u1": "cbed", "u2": "aecd"}  # each user's ranking with the training item left out
    lists = np.array([[idx[v] for v in order[u]] for u in split.user_ids])
    listed = Listed(score, lists)
    assert isinstance(listed, TopScorer)
    read = user_metrics(listed, build_targets(split), ks=(1, 2))
    assert (listed.tops, listed.full) == (1, 0)  # the list, and no full ranking
    assert {k: v.tolist() for k, v in read.values.items()} == {k: v.tolist() for k, v in full.values.items()}
    assert read.coverage == full.coverage
    # A list that holds a training item (u1's "a") is not what the full ranking gives: the batch is ranked in full.
    wrong = lists.copy()
    wrong[np.flatnonzero(split.user_ids == "u1")[0], 0] = idx["a"]
    wrong_listed = Listed(score, wrong)
    assert user_metrics(wrong_listed, build_targets(split), ks=(1, 2)).coverage == full.coverage
    assert (wrong_listed.tops, wrong_listed.full) == (1, 1)
    # Too short a list: ranked in full too; a list outside the catalogue is an error.
    assert user_metrics(Listed(score, lists[:, :1]), build_targets(split), ks=(1, 2)).summary() == pytest.approx(
        full.summary(), nan_ok=True
    )
    with pytest.raises(ValueError, match="outside the catalogue"):
        user_metrics(Listed(score, lists + split.n_items), build_targets(split), ks=(1, 2))


def test_first_not_in_is_the_orders_head_without_each_users_items() -> None:
    """A popularity top k: each user's first k of one order that their row does not hold, read off a plain loop;
    a user who holds more than k of the order's head, one who holds nearly all of it (None), unsorted CSR rows."""
    rng = np.random.default_rng(11)
    n_items, k = 500, 20
    order = rng.permutation(n_items)
    held = rng.random((40, n_items)) < 0.1
    held[3, order[:300]] = True  # deeper than k + the row's count of anything else
    matrix = sp.csr_matrix(held)
    matrix.indices = matrix.indices.copy()
    for r in range(matrix.shape[0]):  # unsorted within rows: the lookup must not assume an order
        lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
        matrix.indices[lo:hi] = matrix.indices[lo:hi][::-1]
    users = np.array([3, 0, 7, 3, 39])
    got = first_not_in(order, matrix, users, k)
    assert got is not None
    for row, user in enumerate(users):
        assert got[row].tolist() == [v for v in order if not held[user, v]][:k]
    held[5, order[k - 1 :]] = True
    held[5, order[: k - 1]] = True
    held[5, order[0]] = False  # user 5 holds every item but one: fewer than k left
    assert first_not_in(order, sp.csr_matrix(held), np.array([0, 5]), k) is None


def test_in_rows_reads_a_sparse_matrix_without_densifying_it() -> None:
    matrix = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=np.float32))
    items = np.array([[0, 3, 2], [0, 1, 2], [3, 2, 1]])
    assert in_rows(matrix, np.array([0, 1, 2]), items).tolist() == [
        [True, True, False],
        [False, False, False],
        [False, True, True],
    ]
    assert in_rows(matrix, np.array([2, 0]), items[:2]).tolist() == [[False, False, True], [True, False, False]]


def test_cold_ranks_by_hand() -> None:
    # "e" is cold (no train row). u1 trained on a; u2 on b. Test: u1 -> e, u2 -> e and c.
    split = make_split(train=[("u1", "a"), ("u2", "b"), ("u3", "c"), ("u3", "d")], test=[("u1", "e"), ("u2", "e")])
    targets = build_targets(split)
    idx = {v: i for i, v in enumerate(split.item_ids)}
    scores = np.zeros((split.n_users, split.n_items), dtype=np.float32)
    u1, u2 = (int(np.flatnonzero(split.user_ids == u)[0]) for u in ("u1", "u2"))
    # u1: a (history, masked) 9, b 3, c 2, e 1, d 0 -> e ranks 3rd among b, c, d, e.
    scores[u1, [idx["a"], idx["b"], idx["c"], idx["d"], idx["e"]]] = [9, 3, 2, 0, 1]
    # u2: e first.
    scores[u2, [idx["a"], idx["b"], idx["c"], idx["d"], idx["e"]]] = [1, 9, 2, 3, 5]
    got = cold_ranks(lambda users: scores[users], targets, split.cold_item_mask, k=2)
    assert got["median_cold_rank"] == 2.0  # ranks 3 and 1
    # top 2: u1 -> b, c (no cold); u2 -> e, d (one cold): 1 of 4 slots.
    assert got["cold_share@2"] == pytest.approx(0.25)


# ---- per-user values and intervals ------------------------------------------------


def test_per_user_values_by_hand_and_their_average_is_the_report() -> None:
    # The case of test_two_users_by_hand: u1 hits at ranks 2 and 4 of targets b, d; u2 at ranks 1 and 2.
    split = make_split([("u1", "a"), ("u2", "b")], [("u1", "b"), ("u1", "d"), ("u2", "a"), ("u2", "e")])
    score = fixed({"u1": [10.0, 0.8, 0.9, 0.1, 0.5], "u2": [0.7, 10.0, 0.3, 0.2, 0.6]}, split)
    per_user = user_metrics(score, build_targets(split), ks=(1, 2))
    assert split.user_ids[per_user.users].tolist() == ["u1", "u2"]
    assert per_user.values["recall@1"].tolist() == [0.0, 0.5]
    assert per_user.values["hit_rate@2"].tolist() == [1.0, 1.0]
    assert per_user.values["ndcg@2"] == pytest.approx([(1 / LOG2_3) / (1 + 1 / LOG2_3), 1.0])
    assert np.isnan(per_user.values["cold_recall@1"]).tolist() == [False, False]  # d and e are cold (untrained)
    assert per_user.summary() == pytest.approx(evaluate_scores(score, split, ks=(1, 2)), nan_ok=True)


def test_interval_holds_the_point_estimate_and_is_reproducible() -> None:
    values = np.random.default_rng(1).binomial(1, 0.3, size=200).astype(float)
    (interval,) = intervals(values)
    assert interval.estimate == pytest.approx(values.mean())
    assert interval.low < interval.estimate < interval.high
    assert interval.high - interval.low < 0.2  # ~ 4 standard errors of a mean of 200 coin flips: 0.13
    assert intervals(values) == [interval]  # a fixed seed
    (constant,) = intervals(np.full(50, 0.25))
    assert (constant.low, constant.estimate, constant.high) == pytest.approx((0.25, 0.25, 0.25))
    assert str(interval) == f"{interval.estimate:.4f} [{interval.low:.3f}, {interval.high:.3f}]"


def test_more_users_give_a_narrower_interval() -> None:
    rng = np.random.default_rng(2)
    few, many = intervals(rng.random(50)), intervals(rng.random(2000))
    assert many[0].high - many[0].low < 0.5 * (few[0].high - few[0].low)


def test_missing_values_are_left_out_of_each_average() -> None:
    # A cold-recall-like column: users without a value are not zeros.
    column = np.array([1.0, np.nan, 0.0, np.nan, 1.0, 1.0])
    estimate, redrawn = bootstrap_means(column, resamples=200)
    assert estimate[0] == pytest.approx(0.75)
    finite = redrawn[np.isfinite(redrawn)]
    assert len(finite) > 190 and ((finite >= 0) & (finite <= 1)).all()


def test_a_model_against_itself_is_within_noise() -> None:
    values = np.random.default_rng(3).random(100)
    same = difference(values, values)
    assert (same.interval.estimate, same.interval.low, same.interval.high) == (0.0, 0.0, 0.0)
    assert same.verdict == "within noise"
    # Two models that differ only by noise: the interval holds 0.
    rng = np.random.default_rng(4)
    base = rng.random(300)
    noisy = difference(base + rng.normal(0, 0.05, 300), base + rng.normal(0, 0.05, 300))
    assert noisy.interval.low < 0 < noisy.interval.high and noisy.verdict == "within noise"


def test_a_clearly_better_model_is_better_and_the_other_way_round_worse() -> None:
    rng = np.random.default_rng(5)
    weak = rng.random(300) * 0.2
    strong = weak + 0.05 + rng.normal(0, 0.02, 300)
    better = difference(strong, weak)
    assert better.verdict == "better" and better.interval.low > 0
    assert better.interval.estimate == pytest.approx(float(np.mean(strong - weak)))
    assert difference(weak, strong).verdict == "worse"


def test_paired_difference_of_two_rankings_of_the_same_users() -> None:
    rng = np.random.default_rng(6)
    train = [(f"u{u}", v) for u in range(40) for v in rng.choice(VIDEOS, size=1)]
    test = [(f"u{u}", v) for u in range(40) for v in rng.choice(VIDEOS, size=2, replace=False)]
    split = make_split(train, test)
    targets = build_targets(split)
    # An oracle that scores each user's targets first, against a constant ranking.
    oracle = targets.relevant.toarray().astype(np.float32)
    good = user_metrics(lambda users: oracle[users], targets, ks=(1,))
    flat = user_metrics(lambda users: np.zeros((len(users), split.n_items)), targets, ks=(1,))
    assert paired_difference(good, flat, "recall@1").verdict == "better"
    assert paired_difference(good, good, "recall@1").verdict == "within noise"
    shown = metric_intervals(good, ["recall@1", "hit_rate@1"])
    assert shown["hit_rate@1"].estimate == 1.0 and shown["recall@1"].low <= shown["recall@1"].estimate
    fewer = user_metrics(lambda users: oracle[users], dataclasses.replace(targets, users=targets.users[:10]), ks=(1,))
    with pytest.raises(ValueError, match="same users"):
        paired_difference(good, fewer, "recall@1")
