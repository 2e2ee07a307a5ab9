"""Ranking metrics on cases small enough to compute by hand."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import torch

from rec_core.metrics import evaluate_scores
from rec_core.split import temporal_split

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _split(train: list[tuple[str, str]], test: list[tuple[str, str]], videos: list[str]):
    """Train rows on day 0, test rows on day 10; a single cut at day 5 (no validation period)."""
    rows = [(u, v, T0) for u, v in train] + [(u, v, T0 + dt.timedelta(days=10)) for u, v in test]
    interactions = pl.DataFrame(
        {"user_id": [r[0] for r in rows], "video_id": [r[1] for r in rows], "ts": [r[2] for r in rows]}
    )
    cut = T0 + dt.timedelta(days=5)
    return temporal_split(interactions, pl.DataFrame({"video_id": videos}), valid_start=cut, test_start=cut)


def _fixed(scores: dict[str, list[float]], split) -> callable:
    table = torch.tensor([scores[u] for u in split.user_ids], dtype=torch.float32)
    return lambda users: table[torch.as_tensor(users)]


VIDEOS = ["a", "b", "c", "d", "e"]


def test_recall_ndcg_hit_rate_by_hand() -> None:
    # u1 watched a in training; in test it watches b and d. u2 has no test rows and is not evaluated.
    split = _split([("u1", "a"), ("u2", "a")], [("u1", "b"), ("u1", "d")], VIDEOS)
    # u1's ranking after masking a: c (0.9), b (0.8), e (0.5), d (0.1)
    score = _fixed({"u1": [10.0, 0.8, 0.9, 0.1, 0.5], "u2": [0.0] * 5}, split)
    m = evaluate_scores(score, split, on="test", ks=(1, 2, 4))
    assert m["users"] == 1
    assert m["recall@1"] == 0.0 and m["hit_rate@1"] == 0.0
    assert m["recall@2"] == pytest.approx(0.5)  # b at rank 2
    assert m["hit_rate@2"] == 1.0
    # DCG@2 = 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # DCG@4 = 1/log2(3) + 1/log2(5)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))


def test_training_items_are_excluded_and_not_targets() -> None:
    # u1 re-watches a (a training item) in test: it is neither ranked nor counted.
    split = _split([("u1", "a")], [("u1", "a"), ("u1", "c")], VIDEOS)
    score = _fixed({"u1": [100.0, 0.0, 1.0, 0.0, 0.0]}, split)
    m = evaluate_scores(score, split, on="test", ks=(1,))
    assert m["recall@1"] == 1.0  # c is first once a is masked, and c is the only target


def test_coverage_counts_distinct_items_in_top_k() -> None:
    split = _split([("u1", "a"), ("u2", "a")], [("u1", "b"), ("u2", "c")], VIDEOS)
    score = _fixed({"u1": [0, 5, 4, 0, 0], "u2": [0, 4, 5, 0, 0]}, split)
    m = evaluate_scores(score, split, on="test", ks=(1, 2))
    assert m["coverage@1"] == pytest.approx(2 / 5)  # b and c
    assert m["coverage@2"] == pytest.approx(2 / 5)
    assert m["recall@1"] == 1.0


def test_cold_recall_only_counts_items_unseen_in_training() -> None:
    # a is warm (in training); b, e are cold. u1's targets: a? no (a is u2's train item only) -> targets b (cold), a.
    split = _split([("u2", "a"), ("u1", "c")], [("u1", "a"), ("u1", "b")], VIDEOS)
    assert set(split.item_ids[split.cold_item_mask]) == {"b", "d", "e"}
    score = _fixed({"u1": [0.0, 1.0, 0.0, 0.0, 0.0], "u2": [0.0] * 5}, split)
    m = evaluate_scores(score, split, on="test", ks=(1,))
    assert m["cold_users"] == 1
    assert m["cold_recall@1"] == 1.0  # the one cold target, b, is ranked first
    assert m["recall@1"] == pytest.approx(0.5)


def test_minus_inf_scores_never_count() -> None:
    split = _split([("u1", "a")], [("u1", "b")], VIDEOS)
    score = _fixed({"u1": [0.0, float("-inf"), float("-inf"), float("-inf"), float("-inf")]}, split)
    m = evaluate_scores(score, split, on="test", ks=(4,))
    assert m["recall@4"] == 0.0 and m["coverage@4"] == 0.0


def test_bad_score_shape_is_an_error() -> None:
    split = _split([("u1", "a")], [("u1", "b")], VIDEOS)
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda users: np.zeros((len(users), 3)), split, on="test")
