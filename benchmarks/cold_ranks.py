"""Training options compared on MovieLens's VALIDATION period: ranking metrics and where cold films rank.

``python -m benchmarks.cold_ranks`` trains the default model and the random-batch
variants (seed ``REC_SEED``) on ``data/eval/movielens`` and prints one Markdown row
each: Recall@10/20/50, NDCG@20, cold Recall@50, the median rank of a relevant cold
film, and the share of the top 50 that is cold. This is the table options are chosen
by, so it never looks at the test period (``make eval`` does, once they are chosen).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from rec_core.data.movielens import DEFAULT_PATH, import_movielens
from rec_core.eval.evaluation import load_lake_data, two_tower_metrics
from rec_core.eval.ranking_metrics import build_targets, cold_ranks
from rec_core.model.training import TrainConfig, prepare, scorer, train
from rec_core.progress import setup_logging
from rec_core.settings import Settings

log = logging.getLogger("bench.cold_ranks")

CONFIGS: dict[str, dict] = {
    "time windows (default)": {},
    "random batches (time_windows=0, newcomers 10%, the old default)": {"time_windows": 0, "new_user_rate": 0.1},
    "random batches, time-aware + 512 uniform negatives": {
        "time_windows": 0,
        "new_user_rate": 0.1,
        "time_aware": True,
        "uniform_negatives": 512,
    },
}
COLUMNS = ("recall@10", "recall@20", "recall@50", "ndcg@20", "cold_recall@50")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only-default", action="store_true", help="just the default model")
    args = parser.parse_args(argv)
    base = Settings.load()
    setup_logging(base.log_level)
    settings = base.override(data_dir=base.paths.data_dir / "eval" / "movielens")
    import_movielens(DEFAULT_PATH, settings=settings)
    data = load_lake_data(settings.paths, settings.batch)
    prepared = prepare(
        data.split, data.videos, data.interactions, data.follows, data.text(settings.paths, settings.model)
    )
    targets = build_targets(data.split, "valid")
    configs = {k: v for k, v in CONFIGS.items() if not args.only_default or not v}
    rows = []
    for name, overrides in configs.items():
        model = train(prepared, dataclasses.replace(TrainConfig(seed=base.seed), **overrides)).model
        metrics = two_tower_metrics(model, prepared, on="valid")
        ranks = cold_ranks(scorer(model, prepared)[1], targets, data.split.cold_item_mask)
        cells = [f"{metrics[c]:.4f}" for c in COLUMNS]
        cells += [f"{ranks['median_cold_rank']:,.0f}", f"{ranks['cold_share@50']:.1%}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        log.info("%s: %s", name, rows[-1])
    headings = ["R@10", "R@20", "R@50", "NDCG@20", "cold R@50", "median cold rank", "cold share of top 50"]
    print(f"| MovieLens, validation, seed {base.seed} | " + " | ".join(headings) + " |")
    print("| --- |" + " ---: |" * 7)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
