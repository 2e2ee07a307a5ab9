"""The ranker's cross-validation, its folds fitted one at a time against as many at once as the job has threads
(``rec_core.rank.ranker_training.cross_validate``'s ``workers``), alternated in one run.

The examples have the shape of a default-world release's (2026-12-07: 1,476 users with a positive among 268
candidates each on average, 395,524 rows, 1.4% positive, 33 features), at a third of its users so that the run stays
short; a release cross-validates one objective (binary) over 4 folds and then refits once, which is not timed here.
The labels are planted in a few columns (creators followed, trending videos, the towers' position), so the trees
and their early stopping behave as on real lists; a fit's cost is LightGBM's, whatever the columns mean. Each run
checks that both ways give the same result (the rounds of every fold and the out-of-fold figures).

``python -m benchmarks.bench_ranker_cv --users 1476`` measures at the release's own size.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from benchmarks.common import BenchRow
from rec_core.model.ranking import release_config
from rec_core.rank.examples import RankExamples
from rec_core.rank.features import FEATURES
from rec_core.rank.ranker_training import cross_validate
from rec_core.runtime import thread_budget
from rec_core.settings import ModelSettings

NAME = "ranker_cv"
USERS, WIDTH, POSITIVE = 500, 268, 0.014
BLOCKS = 1  # of four runs: one at a time, at once, at once, one at a time


def planted_examples(users: int, seed: int = 0) -> RankExamples:
    """``users`` candidate lists of ``WIDTH`` with about ``POSITIVE`` of them watched, the watches explained by
    three columns."""
    rng = np.random.default_rng(seed)
    rows = users * WIDTH
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    follows = rng.random(rows) < 0.1
    trend = rng.random(rows).astype(np.float32)
    rank = np.tile(np.arange(WIDTH, dtype=np.float32), users)
    # Weak, partly interacting signals, so that boosting keeps finding some for ~100-200 rounds as on real lists.
    logit = 1.2 * follows + 1.5 * trend - 0.006 * rank + 0.4 * x[:, 0] + 0.3 * x[:, 1] * x[:, 2] - 4.8  # ~1.4%
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    labels[labels > 0] += rng.random(int((labels > 0).sum())) < 0.3  # some watches liked
    x[:, FEATURES.index("follows_creator")] = follows
    x[:, FEATURES.index("share_7d")] = trend
    x[:, FEATURES.index("tower_rank")] = rank
    return RankExamples(x, labels, np.full(users, WIDTH), np.arange(users), 0, 1, WIDTH, 1.0)


def measure(users: int, blocks: int) -> list[BenchRow]:
    examples = planted_examples(users)
    # One objective, as a release trains by default: one draw of the folds.
    config = dataclasses.replace(release_config(0), objective="binary", cv_groups=0)
    workers = thread_budget(ModelSettings())
    seconds: dict[int, list[float]] = {1: [], workers: []}
    results = {}
    order = [1, workers, workers, 1] * blocks  # ABBA: drift hits both alike
    for way in order:
        started = time.perf_counter()
        results[way] = cross_validate(examples, config, way)
        seconds[way].append(time.perf_counter() - started)
    if results[1] != results[workers]:
        raise AssertionError(f"folds fitted at once gave {results[workers]}, one at a time {results[1]}")
    note = (
        f"{users:,} users x {WIDTH} candidates ({len(examples.labels):,} rows, {(examples.labels > 0).mean():.1%} "
        f"positive), {config.folds} folds, rounds {results[1].rounds}; best of {len(seconds[1])}"
    )
    one, many = min(seconds[1]), min(seconds[workers])
    return [
        BenchRow(NAME, "cross-validation, one fold at a time", one, "s", f"{users / one:,.0f} users/s; {note}"),
        BenchRow(NAME, f"cross-validation, {workers} folds at once", many, "s", f"{users / many:,.0f} users/s"),
        BenchRow(NAME, f"{workers} at once vs one at a time", one / many, "x", "same result checked"),
    ]


def run() -> list[BenchRow]:
    return measure(USERS, BLOCKS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    args = parser.parse_args()
    for row in measure(args.users, args.blocks):
        print(row)
