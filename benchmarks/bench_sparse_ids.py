"""The towers' training with dense AdamW on the id tables against sparse gradients and a lazy Adam: speed and quality.

At the large world's vocabulary (500,000 videos) a dense Adam step reads and writes every row of the video-id
table at every step, whatever the batch touched; ``TrainConfig.sparse_ids`` gives those tables sparse gradients and
SparseAdam. Measured side by side in one run on the default world (``data/bench/training-world``, generated once;
its caption embeddings are cached after the first run):

- **speed**: one epoch of each, alternated, at the default world's vocabulary and with the id tables widened to
  the large world's (10x the videos and creators; the extra rows are ids no example names, so each step does the
  same work on the same batches and only the tables' size changes, as it would at large scale);
- **quality**: both trained to early stopping with the same seed, then every test user's recall@20, recall@50 and
  NDCG@20 over the full catalogue, and the paired difference (sparse minus dense) with a bootstrap interval over
  users.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.common import BenchRow, stopwatch
from rec_core.eval.evaluation import load_lake_data, two_tower_user_metrics
from rec_core.eval.intervals import paired_difference
from rec_core.model.training import TrainConfig, TrainingData, train
from rec_core.model.vocabs import Vocabs
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

NAME = "bench_sparse_ids"
WIDEN = 10  # the large world has 10x the default's videos and creators
METRICS = ("recall@20", "recall@50", "ndcg@20")


def widened(data: TrainingData, factor: int) -> TrainingData:
    """``data`` with video and creator vocabularies ``factor`` times as long: the added ids sort after every real
    one (so the real ids keep their indices) and no example names them."""

    def pad(vocab: np.ndarray) -> np.ndarray:
        extra = np.array([f"~pad{i:08d}" for i in range(len(vocab) * (factor - 1))], dtype=object)
        return np.concatenate([vocab, extra])

    vocabs = Vocabs(pad(data.vocabs.items), pad(data.vocabs.creators), data.vocabs.hashtags)
    return dataclasses.replace(data, vocabs=vocabs)


def run() -> list[BenchRow]:
    base = Settings.load()
    settings = base.override(data_dir=base.paths.data_dir / "bench" / "training-world")
    if not (settings.paths.lake_dir / "CURRENT").is_file():
        generate_data(settings, "default", seed=42)
    data = load_lake_data(settings.paths, settings.batch)
    prepared = data.prepare(data.text(settings.paths, settings.model))
    config = TrainConfig(seed=settings.seed)
    steps = len(data.split.train) // config.batch_size
    rows: list[BenchRow] = []

    for label, inputs in (("default vocabulary", prepared), (f"{WIDEN}x vocabulary", widened(prepared, WIDEN))):
        seconds: dict[bool, float] = {}
        for sparse in (False, True, False, True):  # alternated; the faster of two each
            with stopwatch() as t:
                train(inputs, dataclasses.replace(config, epochs=1, sparse_ids=sparse))
            seconds[sparse] = min(seconds.get(sparse, float("inf")), t[0])
        items = inputs.vocabs.sizes[0] - 1
        note = f"one epoch of ~{steps} steps and its validation, {items:,} video ids, faster of 2"
        for sparse, name in ((False, "dense AdamW"), (True, "sparse ids")):
            rows.append(BenchRow(NAME, f"{label}: epoch, {name}", seconds[sparse], "s", note))
            rows.append(BenchRow(NAME, f"{label}: steps/s, {name}", steps / seconds[sparse], "steps/s", note))
        rows.append(BenchRow(NAME, f"{label}: speed-up, sparse ids", seconds[False] / seconds[True], "x", "same run"))

    trained = {sparse: train(prepared, dataclasses.replace(config, sparse_ids=sparse)) for sparse in (False, True)}
    per_user = {sparse: two_tower_user_metrics(result.model, prepared) for sparse, result in trained.items()}
    users = len(per_user[True].users)
    for metric in METRICS:
        diff = paired_difference(per_user[True], per_user[False], metric)
        dense, sparse = (float(np.mean(per_user[s].values[metric])) for s in (False, True))
        rows.append(
            BenchRow(
                NAME,
                f"test {metric}, sparse ids (dense)",
                sparse,
                "",
                f"dense {dense:.4f}; sparse - dense {diff.interval.signed()}, {diff.verdict}, {users} users",
            )
        )
    for sparse, result in trained.items():
        name = "sparse ids" if sparse else "dense AdamW"
        rows.append(BenchRow(NAME, f"best epoch, {name}", result.best_epoch, "", f"trained {result.seconds:.0f}s"))
    return rows
