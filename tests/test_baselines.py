"""Baselines on small hand-made and planted-cluster data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from rec_core.baselines import EASE, ItemKNN, MostPop, evaluate_baselines
from rec_core.split import temporal_split

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _split(train: list[tuple[str, str]], test: list[tuple[str, str]], videos: list[str]):
    rows = [(u, v, T0) for u, v in train] + [(u, v, T0 + dt.timedelta(days=10)) for u, v in test]
    interactions = pl.DataFrame(
        {"user_id": [r[0] for r in rows], "video_id": [r[1] for r in rows], "ts": [r[2] for r in rows]}
    )
    cut = T0 + dt.timedelta(days=5)
    return temporal_split(interactions, pl.DataFrame({"video_id": videos}), valid_start=cut, test_start=cut)


def test_most_pop_ranks_by_training_popularity() -> None:
    split = _split(
        [("u1", "b"), ("u2", "b"), ("u3", "b"), ("u1", "c"), ("u2", "c"), ("u3", "a")],
        [("u1", "a")],
        ["a", "b", "c", "d"],
    )
    scores = MostPop().fit(split).score(np.array([0, 1]))
    assert scores.shape == (2, 4)
    assert list(np.argsort(-scores[0].numpy())[:3]) == [1, 2, 0]


def test_item_knn_follows_co_occurrence() -> None:
    # a and b are always watched together; c goes with d.
    train = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "c"), ("u3", "d"), ("u4", "a")]
    split = _split(train, [("u4", "b")], ["a", "b", "c", "d"])
    u4 = split.user_positions(["u4"])
    scores = ItemKNN(shrink=0.0).fit(split).score(u4)[0].numpy()
    assert scores[1] > scores[2] and scores[1] > scores[3]


def test_ease_recovers_blocks_and_cannot_score_unseen_items() -> None:
    rng = np.random.default_rng(0)
    train = []
    for u in range(40):
        block = ["a", "b", "c"] if u % 2 == 0 else ["x", "y", "z"]
        train += [(f"u{u}", v) for v in rng.choice(block, size=2, replace=False)]
    split = _split(train, [("u0", "a")], ["a", "b", "c", "x", "y", "z", "cold"])
    ease = EASE(l2=1.0).fit(split)
    seen = {(u, v) for u, v in train}
    for u in range(40):
        scores = ease.score(split.user_positions([f"u{u}"]))[0].numpy()
        unseen = [i for i in np.argsort(-scores) if (f"u{u}", split.item_ids[i]) not in seen]
        # The one block item the user has not watched is their top recommendation.
        assert split.item_ids[unseen[0]] in ({"a", "b", "c"} if u % 2 == 0 else {"x", "y", "z"}), u
    assert ease.score(np.array([0]))[0, list(split.item_ids).index("cold")] == float("-inf")


def test_collaborative_baselines_beat_popularity_on_planted_clusters() -> None:
    rng = np.random.default_rng(1)
    clusters = [[f"c{c}_{i}" for i in range(30)] for c in range(4)]
    # One cluster is far more popular overall, so MostPop recommends it to everyone.
    weights = np.array([0.55, 0.15, 0.15, 0.15])
    train, test = [], []
    for u in range(400):
        home = clusters[u % 4]
        watched = rng.choice(home, size=12, replace=False)
        noise = rng.choice(clusters[int(rng.choice(4, p=weights))], size=4, replace=False)
        train += [(f"u{u}", v) for v in [*watched[:8], *noise]]
        test += [(f"u{u}", v) for v in watched[8:]]
    split = _split(train, test, sorted(v for c in clusters for v in c))
    results = evaluate_baselines(split)
    pop = results["most_pop"]["recall@10"]
    assert results["item_knn"]["recall@10"] > 1.5 * pop, results
    assert results["ease"]["recall@10"] > 1.5 * pop, results


def test_baseline_scores_cover_the_full_catalogue() -> None:
    split = _split([("u1", "a"), ("u2", "b")], [("u1", "b")], ["a", "b", "c"])
    for model in (MostPop(), ItemKNN(), EASE()):
        assert model.fit(split).score(np.array([0, 1])).shape == (2, 3)
