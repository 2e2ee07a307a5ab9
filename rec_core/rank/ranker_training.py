"""How a ranker is trained: cross-validated over folds of users, its objective chosen, refitted on every group.

Two objectives on the same features: LightGBM's ``lambdarank`` (listwise: it optimises NDCG@``eval_at`` of each
user's candidate list, with graded labels) and ``binary`` (pointwise: log loss of "watched"). Each is
cross-validated over users (folds of whole users, early-stopped on the held-out fold's NDCG) and
:func:`choose_objective` keeps the one whose out-of-fold lists measure better on the product's metric (binary
relevance, NDCG@20 within the candidates); the chosen one is then refitted on every group with the folds' median
number of rounds. Nothing here sees the test period: the choice is made on the validation window's users. A release
tries what REC_RANKER_OBJECTIVE names: ``binary`` alone by default, both with ``auto``.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import lightgbm as lgb
import numpy as np

from rec_core.rank.examples import RankExamples
from rec_core.rank.features import FEATURES
from rec_core.rank.ranker import OBJECTIVES, Objective, Ranker, RankerConfig

log = logging.getLogger(__name__)

MAX_CV_REPEATS = 5


@dataclass(frozen=True, slots=True)
class CvResult:
    objective: Objective
    ndcg: float  # mean out-of-fold NDCG@eval_at per user, binary relevance, within the candidates
    recall: float  # mean out-of-fold recall@eval_at per user, within the candidates
    tower_ndcg: float  # the same lists in the towers' order
    rounds: list[int] = field(default_factory=list)  # best iteration of each fold (of each repeat)


def cross_validate(examples: RankExamples, config: RankerConfig, workers: int = 1) -> CvResult:
    """Out-of-fold NDCG / recall of ``config``'s objective, folds of whole users (all their groups).

    With few groups one split into folds is luck (on MovieLens's 60 validation users the better objective flipped
    with the fold seed), so the folds are redrawn until about ``config.cv_groups`` held-out lists were measured, at
    most ``MAX_CV_REPEATS`` times, and the figures averaged.

    The folds' fits are independent, so up to ``workers`` of them run at once, each on its own ``config.threads``
    (LightGBM leaves the GIL while it trains): each fit is the one it would be alone, so the result is the same for
    any ``workers``, only sooner.
    """
    repeats = max(1, min(MAX_CV_REPEATS, -(-config.cv_groups // max(len(examples.groups), 1))))
    row_group = examples.group_of_row
    held_groups = [user_folds(examples.users, config.folds, config.seed + repeat) for repeat in range(repeats)]

    def fit_fold(job: tuple[int, int]) -> tuple[np.ndarray, int, np.ndarray]:
        repeat, k = job
        held_rows = (held_groups[repeat] == k)[row_group]
        booster = _fit(examples, config, ~held_rows, held_rows, config.max_rounds)
        best = int(booster.best_iteration) or config.max_rounds
        return held_rows, best, booster.predict(examples.features[held_rows], num_iteration=best)

    jobs = [(repeat, k) for repeat in range(repeats) for k in range(config.folds)]
    # threads=0 lets each fit take every core: then one at a time.
    at_once = max(1, min(workers // config.threads if config.threads else 1, len(jobs)))
    with ThreadPoolExecutor(at_once) as pool:
        fitted = list(pool.map(fit_fold, jobs))
    ndcgs, recalls, rounds = [], [], []
    for repeat in range(repeats):
        predictions = np.zeros(len(examples.labels))
        for held_rows, best, predicted in fitted[repeat * config.folds : (repeat + 1) * config.folds]:
            rounds.append(best)
            predictions[held_rows] = predicted
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


def train_ranker(examples: RankExamples, config: RankerConfig, workers: int = 1) -> Ranker:
    """Cross-validate ``config`` (for its number of rounds, ``workers`` folds at once), then fit on every group."""
    if len(examples.groups) < config.folds:
        raise ValueError(f"{len(examples.groups)} user groups with a positive; need at least {config.folds}")
    cv = cross_validate(examples, config, workers)
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
    return Ranker.from_booster(
        booster,
        config,
        rounds,
        examples.n_candidates,
        features=FEATURES,
        cv={config.objective: asdict(cv)},
        n_popular=examples.n_popular,
        popular_source=examples.popular_source,
    )


def choose_objective(
    examples: RankExamples, config: RankerConfig, objectives: tuple[Objective, ...] = OBJECTIVES, workers: int = 1
) -> tuple[Ranker, dict[Objective, Ranker]]:
    """A ranker per objective; returns the one with the best out-of-fold NDCG (ties: the first listed) and all.

    With one objective there is nothing to compare, so one cross-validation pass (for its rounds and its figures)
    is enough: the folds are redrawn only to make a comparison between objectives stable. ``workers``: folds fitted
    at once (:func:`cross_validate`).
    """
    if len(objectives) == 1:
        config = replace(config, cv_groups=0)
    rankers = {o: train_ranker(examples, replace(config, objective=o), workers) for o in objectives}
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
