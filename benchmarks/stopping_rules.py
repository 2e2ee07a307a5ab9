"""The towers trained three ways on one lake, paired on the same test users: how to stop, and which optimizer.

With the same seed, on the lake under ``--data`` (its caption cache filled first, e.g. by ``jobs.build_features``):

- ``rounds, dense``: validation at least every ``eval_every`` steps, early stopping on rounds, dense AdamW;
- ``rounds, sparse``: the same with sparse id tables and SparseAdam;
- ``epoch-wise``: validation at the end of each epoch only (``eval_every=0``), ``--epochs`` of them (1: the model
  the epoch-wise rule kept on the large world, whose validation then fell).

Each is evaluated over the full catalogue on the same test users (``--test-users``, a fixed sample by id hash), and
each of the last two is compared with the first by a paired bootstrap over users. The large world's figures of
December 4 2026 are in docs/scaling.md and docs/performance.md:

    python -m jobs.generate_data --scale large --data-dir D && python -m jobs.build_features --data-dir D
    python -m benchmarks.stopping_rules --data D --json D/stopping-rules.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from rec_core.eval.evaluation import load_lake_data
from rec_core.eval.intervals import paired_difference
from rec_core.eval.ranking_metrics import UserMetrics, build_targets, user_metrics
from rec_core.eval.user_sample import with_test_sample
from rec_core.model.training import TrainConfig, scorer, train
from rec_core.settings import Settings

METRICS = ("recall@20", "recall@50", "ndcg@20")


def compare(settings: Settings, epochs: int, test_users: int, eval_every: int) -> dict:
    data = load_lake_data(settings.paths, settings.batch)
    prepared = data.prepare(data.text(settings.paths, settings.model))
    base = TrainConfig(seed=settings.seed, embedding_dim=settings.model.embedding_dim, eval_every=eval_every)
    configs = {
        "rounds, dense": dataclasses.replace(base, sparse_ids=False),
        "rounds, sparse": dataclasses.replace(base, sparse_ids=True),
        "epoch-wise": dataclasses.replace(base, sparse_ids=False, eval_every=0, epochs=epochs),
    }
    targets = build_targets(with_test_sample(prepared.split, test_users), "test")
    runs, per_user = {}, {}
    for name, config in configs.items():
        result = train(prepared, config)
        _, score = scorer(result.model, prepared)
        per_user[name] = user_metrics(score, targets)
        summary = per_user[name].summary()
        runs[name] = {
            "train_seconds": round(result.seconds, 1),
            "best_epoch": result.best_epoch,
            "valid": result.curves["valid_recall@50"],
            "valid_at_epoch": result.curves["valid_at_epoch"],
            "test": {m: round(summary[m], 4) for m in METRICS},
        }
    first = next(iter(configs))
    for name in list(configs)[1:]:
        runs[name]["minus " + first] = {m: _difference(per_user[name], per_user[first], m) for m in METRICS}
    return {"test_users": len(targets.users), "runs": runs}


def _difference(a: UserMetrics, b: UserMetrics, metric: str) -> str:
    """A paired difference as the other benchmarks report it: ``+0.0010 [+0.0006, +0.0014] better``."""
    d = paired_difference(a, b, metric)
    return f"{d.interval.signed()} {d.verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data root with a lake (and its caption cache)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the epoch-wise run (default 1)")
    parser.add_argument("--test-users", type=int, default=20_000, help="test users, a fixed sample (0: all)")
    parser.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="steps between rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = Settings.load().override(data_dir=args.data)
    out = compare(settings, args.epochs, args.test_users, args.eval_every)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
