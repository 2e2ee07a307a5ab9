"""The compiled trees give LightGBM's own predictions, bit for bit, and decline the models they cannot reproduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from rec_core.rank.compiled_forest import CompiledForest
from rec_core.rank.features import FEATURES
from rec_core.rank.ranker import Ranker, RankerConfig

ROOT = Path(__file__).resolve().parents[1]

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
    ranker = Ranker.from_booster(declined["missing"], RankerConfig(objective="binary"), 30, 50, features=NAMES)
    assert ranker.forest is None
    np.testing.assert_array_equal(ranker.predict(with_missing[:50]), declined["missing"].predict(with_missing[:50]))


def test_a_ranker_compiles_its_own_rounds_only() -> None:
    rng = np.random.default_rng(3)
    x, y = _data(rng, 2000)
    booster = _booster("binary", x, y)  # 30 rounds
    ranker = Ranker.from_booster(booster, RankerConfig(objective="binary"), 12, 50, features=NAMES)
    assert ranker.forest is not None and len(ranker.forest.roots) == 12
    np.testing.assert_array_equal(ranker.predict(x), booster.predict(x, num_iteration=12))
    with pytest.raises(ValueError, match="float32"):
        ranker.forest.predict(x.astype(np.float64))


def test_serving_loads_and_applies_a_ranker_without_importing_lightgbm(tmp_path: Path) -> None:
    """The API (and the batch's feed stages) only apply a ranker: its compiled trees read the text model, so neither
    LightGBM nor the scikit-learn it imports is loaded (about a second and 60 MB of every such process)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)
    booster = _booster("binary", x, y)
    Ranker.from_booster(booster, RankerConfig(objective="binary"), 20, 50).save(tmp_path / "ranker")
    np.save(tmp_path / "x.npy", x[:100])
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
import feed_api.app
from rec_core.rank.ranker import Ranker
ranker = Ranker.load(Path({str(tmp_path / "ranker")!r}))
scores = ranker.predict(np.load({str(tmp_path / "x.npy")!r}))
print(json.dumps([sorted({{"lightgbm", "sklearn"}} & set(sys.modules)), ranker.forest is not None, scores.tolist()]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    imported, compiled, scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == [] and compiled
    np.testing.assert_array_equal(scores, booster.predict(x[:100], num_iteration=20))


def _damaged(text: str) -> dict[str, str]:
    """The text model with one kind of damage each: what a bad disk or a bad copy could leave."""
    lines = text.splitlines()
    first_tree = lines.index("Tree=0")
    second_tree = lines.index("Tree=1")
    left = next(i for i in range(second_tree, len(lines)) if lines[i].startswith("left_child="))
    feature = next(i for i in range(second_tree, len(lines)) if lines[i].startswith("split_feature="))
    links = list(lines)
    links[left] = "left_child=" + " ".join("40000" for _ in lines[left].removeprefix("left_child=").split())
    features = list(lines)
    features[feature] = "split_feature=" + " ".join("77" for _ in lines[feature].removeprefix("split_feature=").split())
    return {
        "garbage": "not a model",
        "a tree cut out": "\n".join(lines[:first_tree] + lines[second_tree:]),
        "a link outside the forest": "\n".join(links),
        "a feature it does not have": "\n".join(features),
        "a cut tree": "\n".join(lines[:feature]),
    }


@pytest.mark.parametrize(
    "damage", ["garbage", "a tree cut out", "a link outside the forest", "a feature it does not have", "a cut tree"]
)
def test_a_damaged_text_model_is_refused_before_anything_walks_it(damage: str) -> None:
    """The compiled walk reads where the trees point without checking, and LightGBM aborts the whole process on
    some damaged texts: a damaged model is a ValueError when the ranker is built, never a crash later."""
    rng = np.random.default_rng(5)
    x, y = _data(rng, 2000)
    text = _damaged(_booster("binary", x, y).model_to_string())[damage]
    with pytest.raises(ValueError):
        CompiledForest.from_model(text)
    with pytest.raises(ValueError):
        Ranker(text, RankerConfig(objective="binary"), 30, 50, NAMES)
