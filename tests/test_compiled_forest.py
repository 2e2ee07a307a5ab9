"""The compiled trees give LightGBM's own predictions, bit for bit, and decline the models they cannot reproduce."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from rec_core.rank.compiled_forest import CompiledForest
from rec_core.rank.ranker import Ranker, RankerConfig

N_FEATURES = 6
NAMES = tuple(f"f{i}" for i in range(N_FEATURES))


def _data(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    x[:, 3] = rng.integers(0, 4, rows)  # a few distinct values: splits between them
    logit = 2 * x[:, 0] - x[:, 1] * x[:, 2] + (x[:, 3] == 2) + 0.5 * rng.normal(size=rows)
    return x, (logit > 0).astype(np.int32)


def _booster(objective: str, x: np.ndarray, y: np.ndarray, **params: object) -> lgb.Booster:
    base = {"objective": objective, "num_leaves": 15, "min_data_in_leaf": 5, "verbosity": -1, "seed": 0}
    group = {"group": np.full(len(y) // 50, 50)} if objective == "lambdarank" else {}
    return lgb.train(base | params, lgb.Dataset(x, y, **group), num_boost_round=30)


def _thresholds(booster: lgb.Booster) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}

    def walk(node: dict) -> None:
        if "split_feature" in node:
            out.setdefault(node["split_feature"], []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def _on_the_thresholds(booster: lgb.Booster, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Rows whose values sit on a split's threshold rounded to float32 and on the float32 values either side: where a
    comparison in the wrong precision or rounding would send a row the other way."""
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    for feature, values in _thresholds(booster).items():
        t32 = np.array(values, dtype=np.float32)
        near = np.concatenate([t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))])
        x[:, feature] = rng.choice(near, rows)
    return x


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_compiled_scores_are_lightgbms_bit_for_bit(objective: str) -> None:
    rng = np.random.default_rng(0)
    x, y = _data(rng, 3000)
    booster = _booster(objective, x, y)
    forest = CompiledForest.from_model(booster.model_to_string())
    assert isinstance(forest, CompiledForest), forest
    # Rows beyond the eight that walk together, and rows that are only the remainder.
    for rows in (_on_the_thresholds(booster, rng, 1003), x[:7], x[:8], x[:1]):
        np.testing.assert_array_equal(forest.predict(rows), booster.predict(rows))
    # A missing value is read as 0, as LightGBM reads it for a feature that had none in training.
    holes = x[:100].copy()
    holes[rng.random(holes.shape) < 0.2] = np.nan
    np.testing.assert_array_equal(forest.predict(holes), booster.predict(holes))


def test_trees_of_one_leaf_and_a_sigmoid_scale_compile() -> None:
    rng = np.random.default_rng(1)
    x, y = _data(rng, 500)
    booster = _booster("binary", x, y, sigmoid=0.5, min_data_in_leaf=300)  # no split leaves 300 rows on each side
    forest = CompiledForest.from_model(booster.model_to_string())
    assert isinstance(forest, CompiledForest) and forest.sigmoid == 0.5
    assert (forest.roots >= forest.internal).any(), "expected a tree that is a single leaf"
    np.testing.assert_array_equal(forest.predict(x), booster.predict(x))


def test_what_the_walk_cannot_reproduce_is_declined_and_scored_by_lightgbm() -> None:
    rng = np.random.default_rng(2)
    x, y = _data(rng, 2000)
    with_missing = x.copy()
    with_missing[rng.random(x.shape) < 0.1] = np.nan  # missing values in training: LightGBM learns where they go
    declined = {
        "missing": _booster("binary", with_missing, y),
        "categorical": lgb.train(
            {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 5},
            lgb.Dataset(x, y, categorical_feature=[3]),
            num_boost_round=10,
        ),
        "regression": _booster("regression", x, y),
    }
    for name, booster in declined.items():
        assert isinstance(CompiledForest.from_model(booster.model_to_string()), str), name
    ranker = Ranker(declined["missing"], RankerConfig(objective="binary"), 30, 50, NAMES)
    assert ranker.forest is None
    np.testing.assert_array_equal(ranker.predict(with_missing[:50]), declined["missing"].predict(with_missing[:50]))


def test_a_ranker_compiles_its_own_rounds_only() -> None:
    rng = np.random.default_rng(3)
    x, y = _data(rng, 2000)
    booster = _booster("binary", x, y)  # 30 rounds
    ranker = Ranker(booster, RankerConfig(objective="binary"), 12, 50, NAMES)
    assert ranker.forest is not None and len(ranker.forest.roots) == 12
    np.testing.assert_array_equal(ranker.predict(x), booster.predict(x, num_iteration=12))
    with pytest.raises(ValueError, match="float32"):
        ranker.forest.predict(x.astype(np.float64))
