"""Split, fit and full-catalogue evaluation of the baselines at the default synthetic scale.

Generates the default world (seed from the settings) into a throwaway data
root, splits it in time, then fits MostPop, ItemKNN and EASE and evaluates
each on the test period over all 50,000 videos. Reports the wall time of
every step and test Recall@50, so a slowdown or a quality regression of a
baseline shows up next to the others.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import BenchRow, stopwatch
from rec_core.data.lake import Lake
from rec_core.data.split import split_from_lake
from rec_core.eval.baselines import evaluate_baselines
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

NAME = "baselines"
SCALE = "default"


def run() -> list[BenchRow]:
    settings = Settings.load()
    with tempfile.TemporaryDirectory(prefix="bench_baselines_") as tmp:
        settings = settings.override(data_dir=Path(tmp))
        generate_data(settings, SCALE)
        with stopwatch() as t_split:
            split = split_from_lake(Lake(settings.paths.lake_dir))
    note = f"{split.n_users:,} users, {split.n_items:,} videos, {len(split.train):,} train interactions"
    rows = [BenchRow(NAME, f"temporal split, {SCALE} scale", t_split[0], "s", note)]
    for name, metrics in evaluate_baselines(split, "test").items():
        users = f"{int(metrics['users']):,} test users, full catalogue"
        rows += [
            BenchRow(NAME, f"{name}: fit", metrics["fit_seconds"], "s", f"{os.cpu_count()} CPUs"),
            BenchRow(NAME, f"{name}: evaluate", metrics["eval_seconds"], "s", users),
            BenchRow(NAME, f"{name}: test recall@50", metrics["recall@50"], "", f"ndcg@50 {metrics['ndcg@50']:.4f}"),
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
