"""``make eval``: recommendation quality on held-out data, against baselines, over the full catalogue.

Two data sets, each in its own data root under ``data/eval/`` so nothing the
demo serves is touched:

* ``synthetic``: the default synthetic world (seed 42); also checks that the
  model recovers the planted affinity;
* ``movielens``: ``../shared/datasets/movielens-small`` (temporal split).

For each: the two-tower model and its ablations (no log-Q correction, no
auxiliary engagement head, random batches instead of time windows), MostPop,
ItemKNN, EASE and a recency-weighted MostPop, all on the same split; then the
default model and the baselines again "as served": through the feed policy,
whose fresh slots go to videos that appeared after the cut (what a feed would
show, and the only way an ID-based baseline shows a cold video at all). Writes
``data/eval/quality-<data set>.md`` (the README's tables) and ``.json`` beside it. ``--only synthetic|movielens``
runs one; ``--seeds N`` retrains the default model with more seeds (``make eval`` does so on MovieLens, whose
74 test users make one run's luck visible).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from rec_core.data.movielens import DEFAULT_PATH, import_movielens
from rec_core.eval.baselines import AS_SERVED, MostPop, default_baselines, evaluate_baselines
from rec_core.eval.evaluation import LakeData, load_lake_data, markdown_table, two_tower_metrics
from rec_core.model.training import TrainConfig, prepare, scorer, train
from rec_core.progress import setup_logging
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


def evaluate_dataset(
    settings: Settings, data: LakeData, variants: dict[str, dict], truth_dir: Path | None, seeds: int = 1
) -> dict:
    text = data.text(settings)
    prepared = prepare(data.split, data.videos, data.interactions, data.follows, text)
    models: dict[str, dict[str, float]] = {}
    served_models: dict[str, dict[str, float]] = {}
    served = data.served_as()
    extra: dict[str, float] = {}
    for name, overrides in variants.items():
        config = dataclasses.replace(TrainConfig(seed=settings.seed), **overrides)
        started = time.monotonic()
        result = train(prepared, config)
        models[name] = two_tower_metrics(result.model, prepared)
        models[name]["train_seconds"] = round(time.monotonic() - started, 1)
        if name == "two_tower" and truth_dir is not None:
            extra["planted_affinity_spearman"] = planted_affinity_correlation(result.model, prepared, truth_dir)
        if name == "two_tower":
            served_models = {name: two_tower_metrics(result.model, prepared, served=served)}
    started = time.monotonic()
    baselines = [*default_baselines(), MostPop(half_life_days=RECENT_HALF_LIFE_DAYS)]
    for name, metrics in evaluate_baselines(data.split, models=baselines, served=served).items():
        (served_models if name.endswith(AS_SERVED) else models)[name.removesuffix(AS_SERVED)] = metrics
    extra["baselines_seconds"] = round(time.monotonic() - started, 1)
    # On a small test set (MovieLens: 74 users) one training run's luck can flip a comparison: other seeds say how much.
    spread = {
        f"two_tower, seed {seed}": two_tower_metrics(train(prepared, TrainConfig(seed=seed)).model, prepared)
        for seed in range(settings.seed + 1, settings.seed + seeds)
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
        "served": served_models,
        "seeds": spread,
        "checks": extra,
    }


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
    """The Markdown section of one data set: the plain table, the served one and the seed spread."""
    split = result["split"]
    lines = [
        f"### {name}: {result['dataset']}",
        "",
        f"Temporal split: train before {split['valid_start']}, test from {split['test_start']}; "
        f"{split['items']:,} videos ranked; checks: {result['checks']}",
        "",
        markdown_table(result["models"]),
        "",
        "As served (the feed policy over each ranking: creator cap, 10% of slots for videos new since the cut):",
        "",
        markdown_table(result["served"]),
        "",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["synthetic", "movielens"])
    parser.add_argument("--no-ablations", action="store_true", help="only the full two-tower model")
    parser.add_argument("--all-ablations", action="store_true", help="also the cold-start options of TrainConfig")
    parser.add_argument("--only-cold-start", action="store_true", help="the default model and the cold-start options")
    parser.add_argument("--seeds", type=int, default=1, help="also train the default model with N-1 more seeds")
    args = parser.parse_args(argv)
    base = Settings.load()
    setup_logging(base.log_level)
    out_dir = base.paths.data_dir / "eval"
    variants = {"two_tower": {}} if args.no_ablations else VARIANTS
    if args.only_cold_start:
        variants = {"two_tower": {}, **MORE_VARIANTS}
    elif args.all_ablations:
        variants = {**variants, **MORE_VARIANTS}
    results: dict[str, dict] = {}
    if args.only in (None, "synthetic"):
        settings = base.override(data_dir=out_dir / "synthetic")
        generate_data(settings, "default", seed=42)
        results["synthetic"] = evaluate_dataset(
            settings, load_lake_data(settings), variants, settings.paths.truth_dir, args.seeds
        )
    if args.only in (None, "movielens"):
        settings = base.override(data_dir=out_dir / "movielens")
        import_movielens(DEFAULT_PATH, settings=settings)
        results["movielens"] = evaluate_dataset(settings, load_lake_data(settings), variants, None, args.seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        lines = report_lines(name, result, base.seed)
        # One file per data set, so ``--only`` reruns one without losing the other's last figures.
        (out_dir / f"quality-{name}.md").write_text("\n".join(lines))
        (out_dir / f"quality-{name}.json").write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
        print(f"written to {out_dir / f'quality-{name}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
