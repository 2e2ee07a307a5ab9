"""Retrieval + ranking against retrieval alone and recency-weighted MostPop, over the full catalogue.

``python -m benchmarks.ranker_quality [--only movielens|synthetic] [--candidates 500] [--max-users 2000]``

For each data set (MovieLens-small, ``../shared/datasets/movielens-small``; and a reduced synthetic world, 3,000
users and 15,000 videos of the default world's structure, seed 42), each in its own data root under
``data/eval/ranker-<name>``: the two towers are trained on the temporal split's training part (before
``valid_start``), the ranker on the validation window's users (:mod:`rec_core.rank.examples`), both objectives, and
the one with the better out-of-fold NDCG@20 is marked "chosen". Then, on the test period, every model ranks the full
catalogue for every test user (:mod:`rec_core.eval.ranking_metrics`):

* ``two_tower``: as ``make eval`` scores it (tower inputs as of ``valid_start``);
* ``two_tower @ test_start``: the same towers with inputs as of ``test_start`` and each user's videos seen before it
  left out: retrieval alone, exactly the lists the ranker reorders (its ``recall@N`` is the ceiling of any
  reordering of the top N);
* ``+ ranker (<objective>)``: those top N in the ranker's order, then the rest in the towers' order;
* ``most_pop_recent_180d``: as ``make eval`` fits it (training part only), and the same popularity as of
  ``test_start`` (everything before it, seen videos left out), the like-for-like reference for the two above.

The ranking step's cost is timed per user: features (the engagement head included) plus the LightGBM scoring of N
candidates, without the retrieval. Writes ``data/eval/ranker-quality-<name>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rec_core.data.movielens import DEFAULT_PATH, import_movielens
from rec_core.eval.baselines import MostPop
from rec_core.eval.evaluation import LakeData, load_lake_data
from rec_core.eval.intervals import paired_difference
from rec_core.eval.ranking_metrics import UserMetrics, build_targets, user_metrics
from rec_core.model.training import TrainConfig, scorer, train
from rec_core.progress import setup_logging
from rec_core.rank.candidates import DEFAULT_CANDIDATES
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import DEFAULT_MAX_USERS, split_examples
from rec_core.rank.ranker import RankerConfig, choose_objective
from rec_core.rank.retrieval import Towers, as_of_scores, tower_view
from rec_core.rank.scoring import RankedRetrieval
from rec_core.rank.state import HALF_LIVES_DAYS, AsOfState, state_at
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

log = logging.getLogger("bench.ranker_quality")

SYNTHETIC_USERS, SYNTHETIC_VIDEOS = 3_000, 15_000  # the default world's structure at a scale that runs in minutes
RECENT_HALF_LIFE_DAYS = 180.0  # make eval's recency-weighted MostPop
METRICS = ("recall@20", "ndcg@20", "recall@50", "cold_recall@50")
PAIRED_METRICS = ("recall@20", "ndcg@20")
RETRIEVAL = "two_tower @ test_start"


def evaluate_dataset(settings: Settings, data: LakeData, n: int, max_users: int) -> dict:
    split = data.split
    started = time.monotonic()
    prepared = data.prepare(data.text(settings.paths, settings.model))
    trained = train(prepared, TrainConfig(seed=settings.seed))
    towers = Towers.from_training(trained.model, prepared)
    tower_seconds = time.monotonic() - started

    frames = (data.videos, data.interactions, data.follows)
    events = RankEvents.build(split.user_ids, *frames)
    started = time.monotonic()
    examples = split_examples(towers, events, split, frames, n, max_users, settings.seed)
    chosen, rankers = choose_objective(examples, RankerConfig(seed=settings.seed))
    ranker_seconds = time.monotonic() - started

    t = split.test_start_ms
    view, state = tower_view(towers, split.user_ids, *frames, t), state_at(events, t)
    targets = build_targets(split, "test")
    ks = (20, 50, n)
    per_user: dict[str, UserMetrics] = {}
    cost: dict[str, dict[str, float]] = {}
    per_user["two_tower"] = user_metrics(scorer(trained.model, prepared)[1], targets, ks)
    per_user[RETRIEVAL] = user_metrics(RankedRetrieval(view, state, None, n), targets, ks)
    for objective, ranker in rankers.items():
        score = RankedRetrieval(view, state, ranker, n)
        name = f"+ ranker ({objective}{', chosen' if ranker is chosen else ''})"
        per_user[name] = user_metrics(score, targets, ks)
        cost[name] = {
            "users_per_s": score.users_per_second(),
            "ms_per_user": 1000.0 / score.users_per_second(),
            "retrieve_ms_per_user": 1000.0 * score.seconds["retrieve"] / score.users_scored,
        }
    popular = MostPop(half_life_days=RECENT_HALF_LIFE_DAYS).fit(split)
    per_user[popular.name] = user_metrics(popular.score, targets, ks)
    per_user[f"{popular.name} @ test_start"] = user_metrics(_recent_popularity(state), targets, ks)
    ranked = next(name for name in per_user if name.endswith(", chosen)"))
    paired = {
        f"{ranked} - {other}": {key: _paired(per_user[ranked], per_user[other], key) for key in PAIRED_METRICS}
        for other in (RETRIEVAL, f"{popular.name} @ test_start")
    }
    models = {name: {**metrics.summary(), **cost.get(name, {})} for name, metrics in per_user.items()}
    return {
        "dataset": data.dataset,
        "split": split.summary(),
        "candidates": n,
        "examples": {
            "users": len(examples.groups),
            "rows": len(examples.labels),
            "positive_share": float((examples.labels > 0).mean()),
            "candidate_recall": examples.candidate_recall,
        },
        "cv": chosen.cv,
        "chosen": chosen.config.objective,
        "models": models,
        "paired": paired,
        "seconds": {"towers": round(tower_seconds, 1), "examples_and_rankers": round(ranker_seconds, 1)},
    }


def _paired(a: UserMetrics, b: UserMetrics, key: str) -> str:
    diff = paired_difference(a, b, key)
    return f"{diff.interval} {diff.verdict}"


def _recent_popularity(state: AsOfState) -> Callable[[np.ndarray], torch.Tensor]:
    """Recency-weighted popularity as of the state's instant, seen videos out, unposted ones last (a ScoreFn)."""
    row = torch.from_numpy(state.item_decayed[HALF_LIVES_DAYS.index(RECENT_HALF_LIFE_DAYS)].astype(np.float32))

    def score(users: np.ndarray) -> torch.Tensor:
        return as_of_scores(row.expand(len(users), -1), state.seen, state.item_posted, users)

    return score


def report_lines(name: str, result: dict) -> list[str]:
    n = result["candidates"]
    columns = [*METRICS, f"recall@{n}"]
    lines = [
        f"### {name}: {result['dataset']}",
        "",
        f"Split: {result['split']}. Ranker examples: {result['examples']}. Seconds: {result['seconds']}.",
        "",
        "| model | " + " | ".join(columns) + " | ranking ms/user | users/s |",
        "| --- |" + " ---: |" * (len(columns) + 2),
    ]
    for model, m in result["models"].items():
        cost = [f"{m['ms_per_user']:.2f}", f"{m['users_per_s']:.0f}"] if "users_per_s" in m else ["", ""]
        lines.append(f"| {model} | " + " | ".join(_fmt(m.get(c)) for c in columns) + " | " + " | ".join(cost) + " |")
    lines += [
        "",
        f"Objective choice (validation users, out of fold; chosen: {result['chosen']}):",
        "",
        "| objective | ndcg@20 | recall@20 | towers' order ndcg@20 | rounds per fold |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for objective, cv in result["cv"].items():
        lines.append(
            f"| {objective} | {cv['ndcg']:.4f} | {cv['recall']:.4f} | {cv['tower_ndcg']:.4f} | {cv['rounds']} |"
        )
    lines += ["", "Paired over the test users (mean difference, 95% bootstrap interval, verdict):", ""]
    for pair, diffs in result["paired"].items():
        lines.append(f"- {pair}: " + "; ".join(f"{key} {value}" for key, value in diffs.items()))
    return [*lines, ""]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["synthetic", "movielens"])
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="the towers' top N to rerank")
    parser.add_argument("--max-users", type=int, default=DEFAULT_MAX_USERS, help="validation users sampled")
    args = parser.parse_args(argv)
    base = Settings.load()
    setup_logging(base.log_level)
    out_dir: Path = base.paths.data_dir / "eval"
    for name in ("movielens", "synthetic"):
        if args.only not in (None, name):
            continue
        settings = base.override(data_dir=out_dir / f"ranker-{name}")
        if name == "synthetic":
            generate_data(settings, "default", users=SYNTHETIC_USERS, videos=SYNTHETIC_VIDEOS, seed=42)
        else:
            import_movielens(DEFAULT_PATH, settings=settings)
        data = load_lake_data(settings.paths, settings.batch)
        result = evaluate_dataset(settings, data, args.candidates, args.max_users)
        lines = report_lines(name, result)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"ranker-quality-{name}.md").write_text("\n".join(lines))
        (out_dir / f"ranker-quality-{name}.json").write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
