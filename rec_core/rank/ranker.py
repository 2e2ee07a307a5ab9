"""The ranker: gradient-boosted trees over the pair features, trained per user group; save, load, apply.

Two objectives on the same features: LightGBM's ``lambdarank`` (listwise: it optimises NDCG@``eval_at`` of each
user's candidate list, with graded labels) and ``binary`` (pointwise: log loss of "watched"). Each is
cross-validated over users (folds of whole users, early-stopped on the held-out fold's NDCG) and
:func:`choose_objective` keeps the one whose out-of-fold lists measure better on the product's metric (binary
relevance, NDCG@20 within the candidates); the chosen one is then refitted on every group with the folds' median
number of rounds. Nothing here sees the test period: the choice is made on the validation window's users. A release
tries what REC_RANKER_OBJECTIVE names: ``binary`` alone by default, both with ``auto``.

A saved ranker is a folder: ``ranker.txt`` (LightGBM's text model) and ``ranker.json`` (feature names in column
order, the objective and parameters, rounds, the number of candidates N it reorders, the as-of rule its features
follow, the cross-validation figures), so a model version can carry it and a reader can refuse features it does
not know.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import lightgbm as lgb
import numpy as np

from rec_core.atomic import write_bytes_atomic
from rec_core.rank.candidates import POPULAR_SOURCE
from rec_core.rank.compiled_forest import CompiledForest
from rec_core.rank.examples import RankExamples
from rec_core.rank.features import FEATURES

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
MAX_CV_REPEATS = 5
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


@dataclass(frozen=True, slots=True)
class CvResult:
    objective: Objective
    ndcg: float  # mean out-of-fold NDCG@eval_at per user, binary relevance, within the candidates
    recall: float  # mean out-of-fold recall@eval_at per user, within the candidates
    tower_ndcg: float  # the same lists in the towers' order
    rounds: list[int] = field(default_factory=list)  # best iteration of each fold (of each repeat)


@dataclass(slots=True)
class Ranker:
    booster: lgb.Booster
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

    def __post_init__(self) -> None:
        forest = CompiledForest.from_model(self.booster.model_to_string(num_iteration=self.rounds))
        if isinstance(forest, str):
            log.info("ranker scored by LightGBM, not compiled: %s", forest)
        else:
            # Its compiled walk is loaded now, not in the first request that ranks.
            forest.predict(np.zeros((1, forest.n_features), dtype=np.float32))
            self.forest = forest

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
            "lightgbm": lgb.__version__,
        }
        return {
            MODEL_FILE: self.booster.model_to_string(num_iteration=self.rounds).encode(),
            META_FILE: json.dumps(meta, indent=2).encode(),
        }

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
        booster = lgb.Booster(model_str=(folder / MODEL_FILE).read_text())
        return cls(
            booster,
            RankerConfig(**meta["config"]),
            meta["rounds"],
            meta["n_candidates"],
            FEATURES,
            meta["cv"],
            meta.get("n_popular", 0),  # a ranker from before the popular source ranks the towers' list alone
            meta.get("popular_source", POPULAR_SOURCE),
        )


def cross_validate(examples: RankExamples, config: RankerConfig) -> CvResult:
    """Out-of-fold NDCG / recall of ``config``'s objective, folds of whole users (all their groups).

    With few groups one split into folds is luck (on MovieLens's 60 validation users the better objective flipped
    with the fold seed), so the folds are redrawn until about ``config.cv_groups`` held-out lists were measured, at
    most ``MAX_CV_REPEATS`` times, and the figures averaged.
    """
    repeats = max(1, min(MAX_CV_REPEATS, -(-config.cv_groups // max(len(examples.groups), 1))))
    row_group = examples.group_of_row
    ndcgs, recalls, rounds = [], [], []
    for repeat in range(repeats):
        folds = user_folds(examples.users, config.folds, config.seed + repeat)
        predictions = np.zeros(len(examples.labels))
        for k in range(config.folds):
            held = folds == k
            train_rows, held_rows = ~held[row_group], held[row_group]
            booster = _fit(examples, config, train_rows, held_rows, config.max_rounds)
            rounds.append(int(booster.best_iteration) or config.max_rounds)
            predictions[held_rows] = booster.predict(examples.features[held_rows], num_iteration=rounds[-1])
        ndcg, recall = list_metrics(predictions, examples, config.eval_at)
        ndcgs.append(ndcg)
        recalls.append(recall)
    tower_ndcg, _ = list_metrics(-examples.features[:, FEATURES.index("tower_rank")], examples, config.eval_at)
    return CvResult(config.objective, float(np.mean(ndcgs)), float(np.mean(recalls)), tower_ndcg, rounds)


def user_folds(users: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each group (``users``: each group's user): folds of users, not of groups, so a user with lists
    in several label windows is held out of all of them at once. With one group per user in ascending order (one
    window's examples) these are the folds a permutation of the groups gives."""
    distinct, user_of_group = np.unique(users, return_inverse=True)
    return (np.random.default_rng(seed).permutation(len(distinct)) % folds)[user_of_group]


def train_ranker(examples: RankExamples, config: RankerConfig) -> Ranker:
    """Cross-validate ``config`` (for its number of rounds), then fit on every group."""
    if len(examples.groups) < config.folds:
        raise ValueError(f"{len(examples.groups)} user groups with a positive; need at least {config.folds}")
    cv = cross_validate(examples, config)
    rounds = max(1, int(np.median(cv.rounds)))
    everything = np.ones(len(examples.labels), dtype=bool)
    booster = _fit(examples, config, everything, None, rounds)
    log.info(
        "ranker %s: out-of-fold ndcg@%d %.4f (towers' order %.4f), recall@%d %.4f, %d rounds",
        config.objective,
        config.eval_at,
        cv.ndcg,
        cv.tower_ndcg,
        config.eval_at,
        cv.recall,
        rounds,
    )
    return Ranker(
        booster,
        config,
        rounds,
        examples.n_candidates,
        FEATURES,
        {config.objective: asdict(cv)},
        examples.n_popular,
        examples.popular_source,
    )


def choose_objective(
    examples: RankExamples, config: RankerConfig, objectives: tuple[Objective, ...] = OBJECTIVES
) -> tuple[Ranker, dict[Objective, Ranker]]:
    """A ranker per objective; returns the one with the best out-of-fold NDCG (ties: the first listed) and all.

    With one objective there is nothing to compare, so one cross-validation pass (for its rounds and its figures)
    is enough: the folds are redrawn only to make a comparison between objectives stable.
    """
    if len(objectives) == 1:
        config = replace(config, cv_groups=0)
    rankers = {objective: train_ranker(examples, replace(config, objective=objective)) for objective in objectives}
    best = max(objectives, key=lambda o: (rankers[o].cv[o]["ndcg"], -objectives.index(o)))
    every_cv = {o: r.cv[o] for o, r in rankers.items()}
    for ranker in rankers.values():
        ranker.cv = every_cv
    return rankers[best], rankers


def list_metrics(scores: np.ndarray, examples: RankExamples, k: int) -> tuple[float, float]:
    """Mean per-user NDCG@k and recall@k of each group ordered by ``scores``, relevance = label > 0."""
    bounds = np.concatenate([[0], np.cumsum(examples.groups)])
    relevant = examples.labels > 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg, recall = [], []
    for lo, hi in itertools.pairwise(bounds):
        rel = relevant[lo:hi]
        top = np.argsort(-scores[lo:hi], kind="stable")[:k]
        hits = rel[top]
        n_rel = int(rel.sum())
        ideal = discounts[: min(n_rel, k)].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal) if ideal else 0.0)
        recall.append(float(hits.sum()) / n_rel if n_rel else 0.0)
    return float(np.mean(ndcg)) if ndcg else float("nan"), float(np.mean(recall)) if recall else float("nan")


def _fit(
    examples: RankExamples,
    config: RankerConfig,
    train_rows: np.ndarray,
    valid_rows: np.ndarray | None,
    rounds: int,
) -> lgb.Booster:
    def dataset(rows: np.ndarray, reference: lgb.Dataset | None = None) -> lgb.Dataset:
        labels = examples.labels[rows]
        if config.objective == "binary":
            labels = (labels > 0).astype(np.int32)
        group_sizes = np.bincount(examples.group_of_row[rows], minlength=len(examples.groups))
        return lgb.Dataset(
            examples.features[rows],
            labels,
            group=group_sizes[group_sizes > 0],
            feature_name=list(FEATURES),
            reference=reference,
            free_raw_data=True,
        )

    train_set = dataset(train_rows)
    if valid_rows is None:
        return lgb.train(config.params(), train_set, num_boost_round=rounds)
    valid_set = dataset(valid_rows, train_set)
    return lgb.train(
        config.params(),
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)],
    )
