"""A model version's ranking stage: the ranker trained beside its towers, and the stack it serves, evaluated.

The adapter between a model version and :mod:`rec_core.rank` (the recipe is ``benchmarks/ranker_quality.py``'s):
the ranker of a version is trained on the same split as its towers, on the validation window (features as of
``valid_start``, labels from ``[valid_start, test_start)``; on a lake whose window holds few users, also earlier
windows with towers of their own: :mod:`rec_core.model.ranker_windows`), with the objective REC_RANKER_OBJECTIVE
names, or with ``auto`` the one with the better out-of-fold NDCG, and its files
sit at the top of the version's folder (``Ranker.load_if_present``). A version without them (trained with
``REC_RANKER=off``, or before the ranking stage existed) serves retrieval alone.

What a version serves is its :class:`Stack`, and the quality gate judges that stack. With the flag off it is the
towers as they have always been evaluated (inputs as of the training cut against MostPop fitted on training). With
it on, the stack is evaluated as the batch serves it, as of ``test_start`` (towers' inputs and ranker features from
everything before it, what each user watched before it left out: :class:`~rec_core.rank.scoring.RankedRetrieval`),
so the MostPop it must beat is the popularity of that same instant, and a current model is measured the same way
with its own ranker, if it has one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rec_core.eval.evaluation import LakeData
from rec_core.eval.ranking_metrics import (
    EvalTargets,
    ScoreFn,
    UserMetrics,
    build_targets,
    first_not_in,
    popularity_order,
    user_metrics,
    user_metrics_many,
)
from rec_core.model.ranker_windows import LabelWindows, ranker_examples
from rec_core.rank.candidates import DEFAULT_CANDIDATES
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import DEFAULT_MAX_USERS
from rec_core.rank.ranker import META_FILE, OBJECTIVES, Objective, Ranker, RankerConfig
from rec_core.rank.ranker_training import choose_objective
from rec_core.rank.retrieval import Towers, TowerView, as_of_scores, tower_view
from rec_core.rank.scoring import evaluated_stacks
from rec_core.rank.state import AsOfState, state_at
from rec_core.settings import ModelSettings

log = logging.getLogger(__name__)

# What a release trains with: the rank module's defaults (those ranker_quality measured); the seed is the settings'.
RELEASE_RANKER = RankerConfig()

RETRIEVAL = "retrieval"
RANKED = "retrieval + ranker"
MOST_POP_AT_TEST = "most_pop @ test_start"


@dataclass(frozen=True, slots=True)
class Stack:
    """What a version serves, and which of its evaluation's figures the gate compares for it."""

    name: str  # "retrieval" or "retrieval + ranker"
    metrics: str  # the key of the stack's figures in metrics.json's "models"
    most_pop: str  # the MostPop figures it must beat: of the same instant
    as_of: str  # "valid_start" (towers as trained, the evaluation of old) or "test_start" (as the batch serves)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# REC_RANKER=off: exactly the evaluation and gate there were before the ranking stage.
AS_TRAINED = Stack(RETRIEVAL, "two_tower", "most_pop", "valid_start")


def served_stack(model: ModelSettings, has_ranker: bool) -> Stack:
    """The stack a version serves under these settings (the ranker only when the flag is on and it has one)."""
    if not model.ranker_on:
        return AS_TRAINED
    if has_ranker:
        return Stack(RANKED, RANKED, MOST_POP_AT_TEST, "test_start")
    return Stack(RETRIEVAL, RETRIEVAL, MOST_POP_AT_TEST, "test_start")


def has_ranker(folder: Path) -> bool:
    """Whether a version's folder carries a ranker, without loading it."""
    return (folder / META_FILE).is_file()


@dataclass(slots=True)
class VersionRanker:
    """A trained ranker and what the version's config.json says about it."""

    ranker: Ranker
    meta: dict

    def files(self) -> dict[str, bytes]:
        return self.ranker.files()


def release_config(seed: int) -> RankerConfig:
    return replace(RELEASE_RANKER, seed=seed)


def ranker_objectives(model: ModelSettings) -> tuple[Objective, ...]:
    """The objectives a release tries (``REC_RANKER_OBJECTIVE``): both for ``auto``, else the one named."""
    return OBJECTIVES if model.ranker_objective == "auto" else (model.ranker_objective,)  # type: ignore[return-value]


def rank_events(data: LakeData) -> RankEvents:
    """``data``'s frames as the ranker's arrays, in its split's user index: what its training and the stack's
    evaluation both read (4 s at the large scale, so a release builds them once)."""
    return RankEvents.build(data.split.user_ids, data.videos, data.interactions, data.follows)


def train_version_ranker(
    data: LakeData,
    towers: Towers,
    config: RankerConfig,
    n: int = DEFAULT_CANDIDATES,
    max_users: int = DEFAULT_MAX_USERS,
    objectives: tuple[Objective, ...] = OBJECTIVES,
    n_popular: int = 0,
    events: RankEvents | None = None,
    windows: LabelWindows | None = None,
    workers: int = 1,
) -> VersionRanker:
    """The ranker of ``towers`` (trained on ``data``'s split before ``valid_start``), on the validation window and,
    where ``windows`` says so, earlier ones (:mod:`rec_core.model.ranker_windows`); ``events``: ``data``'s frames
    as :class:`RankEvents`, where the caller has them already; ``workers``: cross-validation folds fitted at once.

    Raises ValueError when the window has too few users with a positive among their candidates to cross-validate:
    with the flag on, a version is never released without its ranker (``REC_RANKER=off`` releases retrieval alone).
    """
    started = time.monotonic()
    log.info(
        "ranker: building examples (top %d candidates and %d popular, at most %d validation users)",
        n,
        n_popular,
        max_users,
    )
    if events is None:
        events = rank_events(data)
    windows = windows or LabelWindows()
    examples = ranker_examples(data, towers, windows, n, max_users, config.seed, n_popular, events)
    if len(examples.groups) < config.folds:
        raise ValueError(
            f"the label windows hold {len(examples.groups)} users with a positive among their candidates, too few "
            f"to train a ranker ({config.folds} at least); set REC_RANKER=off to release retrieval alone"
        )
    log.info("ranker: cross-validating %s over %d users, then fitting", " and ".join(objectives), len(examples.groups))
    chosen, _ = choose_objective(examples, config, objectives, workers)
    seconds = time.monotonic() - started
    objective = chosen.config.objective
    cv = chosen.cv
    log.info(
        "ranker: chose %s (out-of-fold ndcg@%d %.4f vs the towers' order %.4f), %d rounds, %.0fs",
        objective,
        config.eval_at,
        cv[objective]["ndcg"],
        cv[objective]["tower_ndcg"],
        chosen.rounds,
        seconds,
    )
    meta = {
        "has_ranker": True,
        "objective": objective,
        "n_candidates": examples.n_candidates,
        "n_popular": examples.n_popular,
        "popular_source": examples.popular_source,
        "rounds": chosen.rounds,
        "eval_at": config.eval_at,
        "cv": cv,
        "examples": {
            "users": len(examples.groups),
            "rows": len(examples.labels),
            "positive_share": float((examples.labels > 0).mean()),
            "candidate_recall": examples.candidate_recall,
            "features_as_of_ms": examples.t_ms,
            "labels_until_ms": examples.until_ms,
            "windows": examples.windows,
        },
        "train_seconds": round(seconds, 1),
        "lake_version": data.lake_version,
    }
    return VersionRanker(chosen, meta)


@dataclass(frozen=True, slots=True)
class AsOfTestStart:
    """The world as of the split's ``test_start``, built once for every stack evaluated on it."""

    data: LakeData
    state: AsOfState
    targets: EvalTargets  # the test users and their held-out positives, shared by every stack

    @classmethod
    def of(cls, data: LakeData, events: RankEvents | None = None) -> AsOfTestStart:
        """``events``: ``data``'s frames as :func:`rank_events` gives them, where the caller has them already."""
        if events is None:
            events = rank_events(data)
        return cls(data, state_at(events, data.split.test_start_ms), build_targets(data.split, "test"))

    def stack_metrics(self, towers: Towers, ranker: Ranker | None) -> UserMetrics:
        """The towers' retrieval, reordered by ``ranker`` when given, per test user over the full catalogue."""
        stacks = evaluated_stacks(self.view(towers), self.state, ranker)
        return user_metrics(stacks["ranked" if ranker is not None else "retrieval"], self.targets)

    def stacks_metrics(self, towers: Towers, ranker: Ranker | None) -> dict[str, UserMetrics]:
        """Retrieval alone, retrieval + ranker when there is one, and MostPop of the same instant, per test user,
        evaluated together (one scoring of the catalogue per batch of users for both stacks)."""
        stacks = evaluated_stacks(self.view(towers), self.state, ranker)
        scorers: dict[str, ScoreFn] = {RETRIEVAL: stacks["retrieval"]}
        if ranker is not None:
            scorers[RANKED] = stacks["ranked"]
        scorers[MOST_POP_AT_TEST] = PopularityAsOf.of(self.state)
        return user_metrics_many(scorers, self.targets)

    def view(self, towers: Towers) -> TowerView:
        """The towers as a ranking at this instant sees them: each test user's inputs as of ``t_ms`` (the test users'
        histories alone: the gate's sample is a fifth of the users at the large scale)."""
        data = self.data
        frames = (data.videos, data.interactions, data.follows)
        return tower_view(towers, data.split.user_ids, *frames, self.state.t_ms, users=self.targets.users)

    def most_pop(self) -> UserMetrics:
        return user_metrics(PopularityAsOf.of(self.state), self.targets)


def version_stack_metrics(instant: AsOfTestStart, towers: Towers, ranker: Ranker | None) -> dict[str, UserMetrics]:
    """A version's evaluation as of test_start, per user: retrieval alone, retrieval + ranker when it has one, and
    MostPop of the same instant."""
    if ranker is None:
        log.info("evaluating retrieval and MostPop as of test_start")
    else:
        log.info(
            "evaluating retrieval, retrieval + ranker (%s, top %d) and MostPop as of test_start",
            ranker.config.objective,
            ranker.n_candidates,
        )
    return instant.stacks_metrics(towers, ranker)


@dataclass(frozen=True, slots=True)
class PopularityAsOf:
    """MostPop's rule (interaction counts, ties to the lower index) over everything before the state's instant,
    as a ranking made then: each user's watched videos out, videos not posted yet last. A ScoreFn, and a
    TopScorer (its top k is the first k posted videos of one order that the user has not watched)."""

    state: AsOfState
    row: torch.Tensor  # float32 (n_items,): in (0, 1], the popularity order as a score
    posted_order: np.ndarray  # int64: the posted videos, most popular first

    @classmethod
    def of(cls, state: AsOfState) -> PopularityAsOf:
        order, ranks = popularity_order(state.item_views)
        # In (0, 1]: as_of_scores' penalty for a video not posted yet assumes scores of a cosine's size.
        ranks /= max(len(ranks), 1)
        return cls(state, torch.from_numpy(ranks), order[state.item_posted[order]].astype(np.int64))

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        return as_of_scores(self.row.expand(len(users), -1), self.state.seen, self.state.item_posted, users)

    def top(self, users: np.ndarray, k: int) -> np.ndarray | None:
        return first_not_in(self.posted_order, self.state.seen, users, k)
