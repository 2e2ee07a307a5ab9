"""``make eval``: recommendation quality on held-out data, against baselines, over the full catalogue.

Two data sets, each in its own data root under ``data/eval/`` so nothing the
demo serves is touched:

* ``synthetic``: the default synthetic world (seed 42); also checks that the
  model recovers the planted affinity;
* ``movielens``: ``../shared/datasets/movielens-small``.

Each under two protocols (``--protocol``, default both; see
``rec_core/data/split.py``): ``temporal``, one global cut (what a batch
recommender lives with; on MovieLens it leaves 74 test users), and
``leave-last-out``, each user's own last interactions held out (every
MovieLens user is evaluated, at the price of other users' later interactions
in training).

For each: the two-tower model and its ablations (no log-Q correction, no
auxiliary engagement head, random batches instead of time windows), MostPop,
ItemKNN, EASE and a recency-weighted MostPop, all on the same split; then the
default model and the baselines again "as served": through the feed policy,
whose fresh slots go to videos without a training interaction (what a feed
would show, and the only way an ID-based baseline shows a cold video at all).

The ranking stage (``rec_core/rank``, ``--no-ranker`` skips it): the default
towers' top N unseen videos reordered by a LightGBM ranker trained on the
validation part (both objectives cross-validated on the validation users, the
better one kept), scored on the test part as of the test cut (temporal: the
global one; leave-last-out: each user's own), as ``two_tower + ranker``;
beside it ``two_tower @ test cut``, the same candidate lists in the towers'
order (retrieval alone: the fair "before"), and recency-weighted MostPop as
of the same cut; with the ranking step's cost per user.

Every per-user metric comes with a 95% interval from bootstrapping the
evaluated users (``rec_core/eval/intervals.py``), and the default model and
the ranked one are compared, paired per user, with recency-weighted MostPop
and EASE on recall@20, ndcg@20 and cold recall@50, and the ranked one with
retrieval alone: "better", "worse" or "within noise".

Writes ``data/eval/quality-<data set>.md`` (temporal; the tables of
docs/quality.md) and ``quality-<data set>-leave-last-out.md``, each with a
``.json`` beside it. ``--only synthetic|movielens`` runs one data set;
``--seeds N`` retrains the default model with more seeds (``make eval`` does
so on MovieLens, whose few temporal test users make one run's luck visible).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rec_core.data.movielens import DEFAULT_PATH, import_movielens
from rec_core.data.split import LLO_TEST_FRACTION, LLO_VALID_FRACTION, PROTOCOLS, Protocol, Split
from rec_core.eval.baselines import MostPop, default_baselines, run_baselines
from rec_core.eval.evaluation import REPORT_METRICS, LakeData, load_lake_data, markdown_table, two_tower_metrics
from rec_core.eval.intervals import RESAMPLES, Interval, metric_intervals, paired_difference
from rec_core.eval.ranking_metrics import EvalTargets, ServedAs, UserMetrics, build_targets, user_metrics
from rec_core.model.ranker_windows import LabelWindows, ranker_examples
from rec_core.model.towers import TwoTower
from rec_core.model.training import TrainConfig, TrainingData, scorer, train
from rec_core.progress import setup_logging
from rec_core.rank.candidates import DEFAULT_CANDIDATES
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import DEFAULT_MAX_USERS, as_of_split
from rec_core.rank.ranker import RankerConfig
from rec_core.rank.ranker_training import choose_objective
from rec_core.rank.retrieval import Towers, as_of_scores
from rec_core.rank.scoring import RankedRetrieval
from rec_core.rank.state import HALF_LIVES_DAYS, AsOfState
from rec_core.runtime import thread_budget
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data
from rec_core.synthetic.truth import load_truth

log = logging.getLogger("bench.quality")

VARIANTS: dict[str, dict] = {
    "two_tower": {},
    "two_tower (no log-Q)": {"logq": False},
    "two_tower (no aux head)": {"aux_weight": 0.0},
    "two_tower (no time windows)": {"time_windows": 0},
}
# The random-batch cold-start options of TrainConfig (``--all-ablations``; each one more training per data set).
MORE_VARIANTS: dict[str, dict] = {
    "two_tower (random batches, time-aware + uniform negatives)": {
        "time_windows": 0,
        "time_aware": True,
        "uniform_negatives": 512,
    },
    "two_tower (random batches, time-aware only)": {"time_windows": 0, "time_aware": True},
}
# A reference beside the baselines: popularity with each watch's weight halved every 180 days (the half-life
# picked on MovieLens's validation period, not its test period). Recency is most of what a feed's future follows.
RECENT_HALF_LIFE_DAYS = 180.0
RECENT = f"most_pop_recent_{RECENT_HALF_LIFE_DAYS:g}d"
# The ranking stage's rows: retrieval alone (the very lists the ranker reorders), retrieval + ranking, and the
# recent popularity as of the same cut (the ranked rows know the validation part; the baselines are fitted on
# training alone).
RETRIEVAL = "two_tower @ test cut"
RANKED = "two_tower + ranker"
RECENT_AT_CUT = f"{RECENT} @ test cut"
# Per-user metrics that get an interval (coverage is the catalogue's, not a user's), and the paired comparisons:
# the default model and the ranked one against the strongest baseline and the strongest collaborative one (cold
# recall too: the ID baselines cannot reach a cold video), and the ranked one against its own retrieval.
INTERVAL_METRICS = [*REPORT_METRICS, "cold_recall@50"]
HEADLINE = ("recall@20", "ndcg@20")
AGAINST_BASELINES = (*HEADLINE, "cold_recall@50")
PAIRED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("two_tower", RECENT, AGAINST_BASELINES),
    ("two_tower", "ease", AGAINST_BASELINES),
    (RANKED, RETRIEVAL, HEADLINE),
    (RANKED, RECENT, AGAINST_BASELINES),
    (RANKED, "ease", AGAINST_BASELINES),
    (RANKED, RECENT_AT_CUT, HEADLINE),
)


@dataclass(frozen=True, slots=True)
class RankerSetup:
    """How the ranking stage is trained and applied on each split."""

    n: int = DEFAULT_CANDIDATES  # the towers' top N it reorders
    popular: int = 0  # popular videos behind them (REC_RANKER_POPULAR: what a release trains with)
    max_users: int = DEFAULT_MAX_USERS  # validation users sampled for its examples (per label window)
    config: RankerConfig = field(default_factory=RankerConfig)
    windows: LabelWindows = field(default_factory=LabelWindows)  # a release's: REC_RANKER_WINDOWS, _MIN_USERS
    workers: int = 1  # cross-validation folds fitted at once (a release's: rec_core.runtime.thread_budget)


def evaluate_dataset(
    settings: Settings,
    data: LakeData,
    variants: dict[str, dict],
    truth_dir: Path | None,
    seeds: int = 1,
    base: TrainConfig | None = None,
    ranker: RankerSetup | None = None,
    text: np.ndarray | None = None,
) -> dict:
    """Every model on ``data``'s split; ``base`` is the training configuration the variants override; ``ranker``:
    also the ranking stage over the default model (None: not); ``text``: caption vectors aligned with the
    catalogue (default: encoded by the settings' text model)."""
    base = base or TrainConfig(seed=settings.seed)
    text = data.text(settings.paths, settings.model) if text is None else text
    prepared = data.prepare(text)
    targets = build_targets(data.split, "test")
    served = data.served_as()
    per_user: dict[str, UserMetrics] = {}
    served_per_user: dict[str, UserMetrics] = {}
    models: dict[str, dict[str, float]] = {}
    extra: dict[str, float] = {}
    default: TwoTower | None = None
    for name, overrides in variants.items():
        config = dataclasses.replace(base, **overrides)
        started = time.monotonic()
        result = train(prepared, config)
        _, score = scorer(result.model, prepared)
        per_user[name] = user_metrics(score, targets)
        models[name] = {**per_user[name].summary(), "train_seconds": round(time.monotonic() - started, 1)}
        if name == "two_tower" and truth_dir is not None:
            extra["planted_affinity_spearman"] = planted_affinity_correlation(result.model, prepared, truth_dir)
        if name == "two_tower":
            served_per_user[name] = user_metrics(score, targets, served=served)
            default = result.model
    ranked = None
    if ranker is not None and default is not None:
        ranked = ranking_stage(default, prepared, data, targets, ranker, base.seed, served)
        for row in (RETRIEVAL, RANKED):
            per_user[row] = ranked.per_user[row]
            models[row] = per_user[row].summary()
        served_per_user.update(ranked.served)
        models[RANKED].update(ranked.info["cost"])
    started = time.monotonic()
    baselines = [*default_baselines(), MostPop(half_life_days=RECENT_HALF_LIFE_DAYS)]
    for run in run_baselines(data.split, models=baselines, served=served):
        models[run.name], per_user[run.name] = run.metrics, run.per_user
        if run.served is not None:
            served_per_user[run.name] = run.served
    extra["baselines_seconds"] = round(time.monotonic() - started, 1)
    if ranked is not None:
        per_user[RECENT_AT_CUT] = ranked.per_user[RECENT_AT_CUT]
        models[RECENT_AT_CUT] = per_user[RECENT_AT_CUT].summary()
    # One training run's luck can flip a comparison the user intervals call clear: other seeds say how much.
    spread = {
        f"two_tower, seed {seed}": two_tower_metrics(
            train(prepared, dataclasses.replace(base, seed=seed)).model, prepared
        )
        for seed in range(base.seed + 1, base.seed + seeds)
    }
    if spread:
        runs = [models["two_tower"], *spread.values()]
        spread[f"two_tower, mean of {len(runs)} seeds"] = {
            key: float(np.mean([run[key] for run in runs])) for key in runs[0] if key != "train_seconds"
        }
    return {
        "dataset": data.dataset,
        "split": data.split.summary(),
        "models": models,
        "served": {name: metrics.summary() for name, metrics in served_per_user.items()},
        "seeds": spread,
        "checks": extra,
        "intervals": _intervals_json(per_user),
        "served_intervals": _intervals_json(served_per_user),
        "paired": paired_comparisons(per_user),
        "segments": segment_comparisons(per_user, history_segments(data.split, targets.users)),
        "served_paired": paired_comparisons(served_per_user),
        "ranker": ranked.info if ranked is not None else None,
    }


@dataclass(frozen=True, slots=True)
class RankingStage:
    per_user: dict[str, UserMetrics]  # RETRIEVAL, RANKED, RECENT_AT_CUT
    served: dict[str, UserMetrics]  # RETRIEVAL and RANKED through the feed policy (its fresh slots)
    info: dict  # the report's ranker section; "cost": the ranking step's cost per user


def ranking_stage(
    model: TwoTower,
    prepared: TrainingData,
    data: LakeData,
    targets: EvalTargets,
    setup: RankerSetup,
    seed: int,
    served: ServedAs,
) -> RankingStage:
    """The ranker over ``model``'s candidates, trained on the validation part and scored on the test part, both
    as of the split's cuts (``rec_core.rank.examples``); both objectives are scored on test for information, the
    one cross-validation chose is the ``RANKED`` row. The retrieval and ranked rows are also scored ``served``:
    the batch applies the feed policy after the ranker, so its fresh slots are what a feed shows of cold videos."""
    split = data.split
    frames = (data.videos, data.interactions, data.follows)
    towers = Towers.from_training(model, prepared)
    events = RankEvents.build(split.user_ids, *frames)
    started = time.monotonic()
    examples = ranker_examples(data, towers, setup.windows, setup.n, setup.max_users, seed, setup.popular, events)
    chosen, rankers = choose_objective(examples, dataclasses.replace(setup.config, seed=seed), workers=setup.workers)
    fit_seconds = time.monotonic() - started
    view, state = as_of_split(towers, events, split, frames, "test")
    per_user = {RETRIEVAL: user_metrics(RankedRetrieval(view, state, None, setup.n), targets)}
    objectives: dict[str, dict] = {}
    cost: dict[str, float] = {}
    for objective, ranker in rankers.items():
        score = RankedRetrieval(view, state, ranker, setup.n)
        metrics = user_metrics(score, targets)
        objectives[objective] = {"cv": ranker.cv[objective], "test": {key: metrics.mean(key) for key in HEADLINE}}
        if ranker is chosen:
            per_user[RANKED] = metrics
            per = 1000.0 / max(score.users_scored, 1)
            cost = {
                "features_ms_per_user": per * score.seconds["features"],
                "rank_ms_per_user": per * score.seconds["rank"],
                "retrieve_ms_per_user": per * score.seconds["retrieve"],
                "ranking_users_per_s": score.users_per_second(),
            }
    per_user[RECENT_AT_CUT] = user_metrics(recent_popularity(state), targets)
    served_rows = {
        RETRIEVAL: user_metrics(RankedRetrieval(view, state, None, setup.n), targets, served=served),
        RANKED: user_metrics(RankedRetrieval(view, state, chosen, setup.n), targets, served=served),
    }
    info = {
        "candidates": setup.n,
        "popular": setup.popular,
        "chosen": chosen.config.objective,
        "examples": {
            "users": len(examples.groups),
            "rows": len(examples.labels),
            "positive_share": float((examples.labels > 0).mean()) if len(examples.labels) else float("nan"),
            "candidate_recall": examples.candidate_recall,
            "windows": examples.windows,
        },
        "objectives": objectives,
        "cost": cost,
        "fit_seconds": round(fit_seconds, 1),
    }
    return RankingStage(per_user, served_rows, info)


def recent_popularity(state: AsOfState) -> Callable[[np.ndarray], torch.Tensor]:
    """Recency-weighted popularity (make eval's half-life) as of ``state``'s cut, each user's seen videos out and
    videos not posted yet last, as :class:`RankedRetrieval` ranks them (a ScoreFn)."""
    row = state.item_decayed[HALF_LIVES_DAYS.index(RECENT_HALF_LIFE_DAYS)].astype(np.float32)
    popular = torch.from_numpy(row)

    def score(users: np.ndarray) -> torch.Tensor:
        return as_of_scores(popular.expand(len(users), -1), state.seen, state.item_posted, users)

    return score


def history_segments(split: Split, users: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluated ``users`` (indices) by whether they had any interaction before their test cut. A user new at the
    cut gives no model anything to personalize on: every model ranks them by some popularity, so the share of such
    users bounds how far any model can beat recent popularity (47 of MovieLens's 74 temporal test users)."""
    known = np.zeros(split.n_users, dtype=bool)
    known[split.train.user_idx] = True
    known[split.valid.user_idx] = True
    return {"with history": users[known[users]], "new at the test cut": users[~known[users]]}


def segment_comparisons(per_user: dict[str, UserMetrics], segments: dict[str, np.ndarray]) -> dict[str, dict]:
    """:func:`paired_comparisons` within each segment of users; none when a segment is empty (the other one is then
    every user, which the whole comparison already says)."""
    if any(len(users) == 0 for users in segments.values()):
        return {}
    return {
        name: {
            "users": len(users),
            "paired": paired_comparisons({model: metrics.among(users) for model, metrics in per_user.items()}),
        }
        for name, users in segments.items()
    }


def paired_comparisons(per_user: dict[str, UserMetrics]) -> list[dict]:
    """Each model of ``PAIRED`` minus its reference, per user, with the users redrawn together."""
    out = []
    for model, against, metrics in PAIRED:
        if model not in per_user or against not in per_user:
            continue
        for metric in metrics:
            diff = paired_difference(per_user[model], per_user[against], metric)
            out.append(
                {
                    "model": model,
                    "against": against,
                    "metric": metric,
                    **dataclasses.asdict(diff.interval),
                    "verdict": diff.verdict,
                }
            )
    return out


def _intervals_json(per_user: dict[str, UserMetrics]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        name: {
            key: dataclasses.asdict(interval) for key, interval in metric_intervals(metrics, INTERVAL_METRICS).items()
        }
        for name, metrics in per_user.items()
    }


def _intervals(stored: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Interval]]:
    return {name: {key: Interval(**value) for key, value in metrics.items()} for name, metrics in stored.items()}


def planted_affinity_correlation(model, prepared, truth_dir: Path, n_users: int = 500, n_videos: int = 2000) -> float:
    """Mean per-user Spearman correlation between model scores and the planted affinity."""
    truth = load_truth(truth_dir)
    rng = np.random.default_rng(0)
    split = prepared.split
    users = rng.choice(np.flatnonzero(split.user_has_train), size=n_users, replace=False)
    videos = rng.choice(split.n_items, size=n_videos, replace=False)
    _, score = scorer(model, prepared)
    ours = score(users)[:, videos].numpy()
    planted = truth.affinity(list(split.user_ids[users]), list(split.item_ids[videos]))
    ranks = lambda x: np.argsort(np.argsort(x, axis=1), axis=1)  # noqa: E731
    a, b = ranks(ours).astype(np.float64), ranks(planted).astype(np.float64)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def report_lines(name: str, result: dict, seed: int) -> list[str]:
    """The Markdown section of one data set under one protocol: the tables with intervals, the paired
    differences and the seed spread."""
    split = result["split"]
    if split.get("protocol", "temporal") == "temporal":
        how = f"Temporal split: train before {split['valid_start']}, test from {split['test_start']}"
        fresh = "videos new since the cut"
    else:
        how = (
            f"Leave-last-out split: each user's last {LLO_TEST_FRACTION:.0%} of interactions (at least one) for "
            f"test, the {LLO_VALID_FRACTION:.0%} before them for validation; {split['held_out_users']:,} of "
            f"{split['users']:,} users held out, training data ends {split['valid_start']}"
        )
        fresh = "videos without a training interaction"
    users = int(result["models"].get("two_tower", next(iter(result["models"].values())))["users"])
    lines = [
        f"### {name}: {result['dataset']}",
        "",
        f"{how}; {users:,} users evaluated, {split['items']:,} videos ranked; checks: {result['checks']}",
        "",
        f"Each metric with its 95% interval from {RESAMPLES:,} bootstrap redraws of the evaluated users:",
        "",
        markdown_table(result["models"], _intervals(result["intervals"])),
        "",
        *ranker_lines(result.get("ranker")),
        f"As served (the feed policy over each ranking: creator cap, 10% of slots for {fresh}):",
        "",
        markdown_table(result["served"], _intervals(result["served_intervals"])),
        "",
        "Each model minus its reference, per user, the users redrawn together (the interval of the "
        'difference; "within noise" when it holds 0):',
        "",
        *paired_table(result["paired"]),
        *segment_lines(result.get("segments", {})),
        "The same comparisons as served (both sides through the feed policy):",
        "",
        *paired_table(result.get("served_paired", [])),
    ]
    if result["seeds"]:
        lines += [
            f"The default model trained with {len(result['seeds']) - 1} more seeds (the first table's is {seed}), "
            "and the mean over all of them:",
            "",
            markdown_table(result["seeds"]),
            "",
        ]
    return lines


def ranker_lines(info: dict | None) -> list[str]:
    """The ranking stage's paragraph: how it was trained, what it costs, both objectives."""
    if not info:
        return []
    ex, cost = info["examples"], info["cost"]
    lines = [
        f"`{RANKED}`: the towers' top {info['candidates']} unseen videos posted before the reference instant "
        f"and the {info.get('popular', 0)} most popular then that they do not hold, "
        f"reordered by the ranker (`rec_core/rank`), trained on {_trained_on(ex)} "
        f"({ex['rows']:,} pairs, {ex['positive_share']:.1%} positive; the candidates held "
        f"{ex['candidate_recall']:.0%} of their validation watches), objective chosen by cross-validation on "
        f"them: {info['chosen']}. `{RETRIEVAL}`: the same candidate lists in the towers' order (retrieval "
        f"alone); `{RECENT_AT_CUT}`: recent popularity as of the same cut. All three are as of the test cut "
        "(temporal: `test_start`; leave-last-out: each user's own), so they know the validation part, which the "
        "baselines above do not. Ranking cost per user: "
        f"{cost['features_ms_per_user']:.2f} ms of features (engagement head included) + "
        f"{cost['rank_ms_per_user']:.2f} ms of LightGBM ({cost['ranking_users_per_s']:,.0f} users/s), after "
        f"{cost['retrieve_ms_per_user']:.2f} ms of retrieval; training the ranker took {info['fit_seconds']} s.",
        "",
        "| objective | CV ndcg@20 | CV recall@20 | CV ndcg@20, towers' order | test recall@20 | test ndcg@20 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for objective, o in info["objectives"].items():
        chosen = " (chosen)" if objective == info["chosen"] else ""
        cv, test = o["cv"], o["test"]
        lines.append(
            f"| {objective}{chosen} | {cv['ndcg']:.4f} | {cv['recall']:.4f} | {cv['tower_ndcg']:.4f} | "
            f"{test['recall@20']:.4f} | {test['ndcg@20']:.4f} |"
        )
    return [*lines, ""]


def _trained_on(examples: dict) -> str:
    windows = examples.get("windows", 1)
    if windows == 1:
        return f"{examples['users']:,} validation users"
    # rec_core.model.ranker_windows: too few users in the validation window alone.
    return (
        f"{examples['users']:,} user lists of the validation window and {windows - 1} earlier ones as large "
        "(each with towers trained before it)"
    )


def paired_table(rows: list[dict]) -> list[str]:
    return [
        "| model | against | metric | difference [95%] | verdict |",
        "| --- | --- | --- | ---: | --- |",
        *(
            f"| {row['model']} | {row['against']} | {row['metric']} | "
            f"{_signed(Interval(row['estimate'], row['low'], row['high']))} | {row['verdict']} |"
            for row in rows
        ),
        "",
    ]


def segment_lines(segments: dict[str, dict]) -> list[str]:
    """The paired comparisons within each segment of :func:`history_segments`."""
    lines = []
    for name, segment in segments.items():
        lines += [f"The same comparisons among the {segment['users']:,} evaluated users {name}:", ""]
        lines += paired_table(segment["paired"])
    return lines


def _signed(interval: Interval) -> str:
    return f"{interval.estimate:+.4f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["synthetic", "movielens"])
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both", help="the split(s) to evaluate on")
    parser.add_argument("--no-ablations", action="store_true", help="only the full two-tower model")
    parser.add_argument("--all-ablations", action="store_true", help="also the cold-start options of TrainConfig")
    parser.add_argument("--only-cold-start", action="store_true", help="the default model and the cold-start options")
    parser.add_argument("--seeds", type=int, default=1, help="also train the default model with N-1 more seeds")
    parser.add_argument("--no-ranker", action="store_true", help="skip the ranking stage's rows")
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="the towers' top N to rerank")
    parser.add_argument("--popular", type=int, help="popular videos behind them (default: REC_RANKER_POPULAR)")
    args = parser.parse_args(argv)
    base = Settings.load()
    popular = base.model.ranker_popular if args.popular is None else args.popular
    # The ranker's label windows as a release takes them, their towers trained as the default model is.
    windows = LabelWindows(base.model.ranker_windows, base.model.ranker_min_users, TrainConfig(seed=base.seed))
    workers = thread_budget(base.model)
    ranker = None if args.no_ranker else RankerSetup(args.candidates, popular, windows=windows, workers=workers)
    setup_logging(base.log_level)
    out_dir = base.paths.data_dir / "eval"
    variants = {"two_tower": {}} if args.no_ablations else VARIANTS
    if args.only_cold_start:
        variants = {"two_tower": {}, **MORE_VARIANTS}
    elif args.all_ablations:
        variants = {**variants, **MORE_VARIANTS}
    protocols: list[Protocol] = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    results: dict[str, dict] = {}
    for name in ("synthetic", "movielens"):
        if args.only not in (None, name):
            continue
        settings = base.override(data_dir=out_dir / name)
        truth_dir = None
        if name == "synthetic":
            generate_data(settings, "default", seed=42)
            truth_dir = settings.paths.truth_dir
        else:
            import_movielens(DEFAULT_PATH, settings=settings)
        for protocol in protocols:
            data = load_lake_data(settings.paths, settings.batch, protocol)
            results[report_name(name, protocol)] = evaluate_dataset(
                settings, data, variants, truth_dir, args.seeds, ranker=ranker
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        lines = report_lines(name, result, base.seed)
        # One file per data set and protocol, so a rerun of one keeps the others' last figures.
        (out_dir / f"quality-{name}.md").write_text("\n".join(lines))
        (out_dir / f"quality-{name}.json").write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
        print(f"written to {out_dir / f'quality-{name}.md'}")
    return 0


def report_name(dataset: str, protocol: Protocol) -> str:
    """``movielens`` for the temporal protocol (the report's historical name), ``movielens-leave-last-out`` else."""
    return dataset if protocol == "temporal" else f"{dataset}-{protocol}"


if __name__ == "__main__":
    raise SystemExit(main())
