"""Ranking metrics on cases small enough to compute by hand."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import torch

from rec_core.data.split import Split, temporal_split
from rec_core.eval.ranking_metrics import ServedAs, build_targets, cold_ranks, evaluate_scores
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
