"""The ranker: gradient-boosted trees over the pair features; its settings, its files, and how it scores.

A saved ranker is a folder: ``ranker.txt`` (LightGBM's text model) and ``ranker.json`` (feature names in column
order, the objective and parameters, rounds, the number of candidates N it reorders, the as-of rule its features
follow, the cross-validation figures), so a model version can carry it and a reader can refuse features it does
not know. How it is trained and chosen is :mod:`rec_core.rank.ranker_training`.

Scoring reads the text model through :class:`~rec_core.rank.compiled_forest.CompiledForest`, so the paths that only
apply a ranker (the API, the batch's feed stages) never import LightGBM, nor the scikit-learn it imports (about a
second and 60 MB of every such process: docs/performance.md); LightGBM's own booster is built on first use, for a
model the forest declines and for tools that read the trees.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rec_core.atomic import write_bytes_atomic
from rec_core.rank.candidates import POPULAR_SOURCE
from rec_core.rank.compiled_forest import CompiledForest
from rec_core.rank.features import FEATURES

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)

Objective = Literal["lambdarank", "binary"]
OBJECTIVES: tuple[Objective, ...] = ("lambdarank", "binary")
MODEL_FILE = "ranker.txt"
META_FILE = "ranker.json"
AS_OF_RULE = (
    "features of a (user, video) pair at instant t read only interactions and follows with ts < t, the video's "
    "content, and the towers' inputs as of t (rec_core.rank.state); trained with t = valid_start on labels from "
    "[valid_start, test_start) and, on a small lake, with t = each earlier window's start on labels inside it, "
    "scored by towers trained before that t (rec_core.model.ranker_windows); applied with t = the batch's as-of"
)
LABEL_RULE = "0 none, 1 watched, 2 watched and liked, in [t, test_start); binary objective: label > 0"


@dataclass(frozen=True, slots=True)
class RankerConfig:
    objective: Objective = "lambdarank"
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 400
    early_stopping: int = 40
    eval_at: int = 20
    folds: int = 4
    cv_groups: int = 1000  # held-out user lists cross-validation measures: its folds are redrawn on small data
    seed: int = 0
    # One thread: OpenMP spinning on a busy machine made 2 threads 6x slower than 1 here (the batch runs one shard
    # per process anyway, so parallelism comes from the shards).
    threads: int = 1

    def params(self) -> dict:
        out = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "metric": "ndcg",
            "eval_at": [self.eval_at],
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if self.threads:
            out["num_threads"] = self.threads
        return out


@dataclass(slots=True)
class Ranker:
    model: str  # LightGBM's text model, cut at ``rounds`` (what ranker.txt holds)
    config: RankerConfig
    rounds: int
    n_candidates: int
    features: tuple[str, ...] = FEATURES
    cv: dict[str, dict] = field(default_factory=dict)  # objective -> CvResult as a dict
    # Popular videos it ranks behind the towers' n_candidates (rec_core.rank.candidates.popular_items): what it was
    # trained on, so every path that applies it gives it the same candidate sources.
    n_popular: int = 0
    popular_source: str = POPULAR_SOURCE
    # The same trees compiled (rec_core.rank.compiled_forest): 2.4x LightGBM's predict, the same scores.
    forest: CompiledForest | None = field(default=None, init=False, repr=False)
    _booster: lgb.Booster | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        forest = CompiledForest.from_model(self.model)  # a damaged text raises here, at load
        if isinstance(forest, str):
            log.info("ranker scored by LightGBM, not compiled: %s", forest)
            _ = self.booster  # built now: a text LightGBM will not read is refused at load, not by a request
        else:
            # Its compiled walk is loaded now, not in the first request that ranks.
            forest.predict(np.zeros((1, forest.n_features), dtype=np.float32))
            self.forest = forest

    @classmethod
    def from_booster(
        cls, booster: lgb.Booster, config: RankerConfig, rounds: int, n_candidates: int, **rest: Any
    ) -> Ranker:
        """The ranker of a trained booster's first ``rounds`` iterations (``rest``: the other fields)."""
        return cls(booster.model_to_string(num_iteration=rounds), config, rounds, n_candidates, **rest)

    @property
    def booster(self) -> lgb.Booster:
        """LightGBM's booster of the same model, built (and LightGBM imported) on first use."""
        if self._booster is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_str=self.model)
        return self._booster

    def predict(self, features: np.ndarray) -> np.ndarray:
        """float64 (rows,): higher is better; comparable within one user's list."""
        if features.shape[1] != len(self.features):
            raise ValueError(f"ranker reads {len(self.features)} features, got {features.shape[1]}")
        if not len(features):
            return np.zeros(0)
        if self.forest is not None and features.dtype == np.float32:  # the features' dtype; others are LightGBM's
            return self.forest.predict(features)
        return self.booster.predict(features, num_iteration=self.rounds, num_threads=self.config.threads or 0)

    def files(self) -> dict[str, bytes]:
        """The ranker as files: what :meth:`save` writes, and what ``ModelStore.save(extra_files=...)`` can carry
        into a model version's folder (:meth:`load` then reads that folder)."""
        meta = {
            "features": list(self.features),
            "objective": self.config.objective,
            "config": asdict(self.config),
            "params": self.config.params(),
            "rounds": self.rounds,
            "n_candidates": self.n_candidates,
            "n_popular": self.n_popular,
            "popular_source": self.popular_source,
            "as_of_rule": AS_OF_RULE,
            "label_rule": LABEL_RULE,
            "cv": self.cv,
            "lightgbm": version("lightgbm"),
        }
        return {MODEL_FILE: self.model.encode(), META_FILE: json.dumps(meta, indent=2).encode()}

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            write_bytes_atomic(folder / name, data)
        return folder

    @classmethod
    def load_if_present(cls, folder: Path) -> Ranker | None:
        """The ranker a model version (or a snapshot) carries in ``folder``; None when it was built without one."""
        return cls.load(folder) if (folder / META_FILE).is_file() else None

    @classmethod
    def load(cls, folder: Path) -> Ranker:
        meta = json.loads((folder / META_FILE).read_text())
        if tuple(meta["features"]) != FEATURES:
            # Columns are positional: a ranker trained on other features would silently read the wrong ones.
            raise ValueError(f"ranker in {folder} was trained on other features than this code computes")
        return cls(
            (folder / MODEL_FILE).read_text(),
            RankerConfig(**meta["config"]),
            meta["rounds"],
            meta["n_candidates"],
            FEATURES,
            meta["cv"],
            meta.get("n_popular", 0),  # a ranker from before the popular source ranks the towers' list alone
            meta.get("popular_source", POPULAR_SOURCE),
        )
