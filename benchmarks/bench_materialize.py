"""Feed materialization at the default scale against the bound of a plain matmul + top-k.

The world is the default synthetic lake (10,000 users, 50,000 videos, about a
million interactions, so the watched filter, likes and follows are realistic);
the vectors are random 64-d unit vectors (the stage's cost does not depend on
what a model learnt). One user shard holds every user, so the figure is the
throughput of one process.

The bound is ``users @ videos.T`` then ``torch.topk(feed_length)`` over the same
vectors in the same batches -- what ranking alone costs, with no watched
filter, no policy, no reasons, no I/O. It is measured before and after the
materialization in the same run (shared machines drift) and averaged; the
ratio ``materialize users/s / bound users/s`` is the figure to watch (target >= 0.5).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from benchmarks.common import BenchRow, stopwatch
from rec_core.data.lake import Lake
from rec_core.feed.batch import BATCH_USERS, build_trending, materialize_feeds
from rec_core.settings import Settings
from rec_core.snapshot.layout import begin_snapshot
from rec_core.synthetic.commit import generate_data

NAME = "materialize"
SCALE = "default"
DIM = 64
SEED = 42


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(path: Path, id_column: str, ids: pa.Array, vectors: np.ndarray) -> None:
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), DIM)
    pq.write_table(pa.table({id_column: ids, "vector": column}), path)


def matmul_topk_bound(users: np.ndarray, videos: np.ndarray, k: int, batch: int = BATCH_USERS) -> float:
    """Seconds for the plain ranking of every user: batched matmul + top-k, nothing else."""
    u, v = torch.from_numpy(users), torch.from_numpy(videos).T.contiguous()
    with stopwatch() as t, torch.inference_mode():
        for lo in range(0, len(users), batch):
            torch.topk(u[lo : lo + batch] @ v, k, dim=1)
    return t[0]


def run() -> list[BenchRow]:
    base = Settings.load()
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        settings = base.override(data_dir=Path(tmp), feed_length=500, embedding_dim=DIM)
        generate_data(settings, SCALE, seed=SEED)
        lake = Lake(settings.paths.lake_dir)
        inter_ts = lake.read("interactions", ["ts"])["ts"]
        created = lake.read("videos", ["created_at"])["created_at"]
        as_of = max(pc.max(inter_ts).as_py(), pc.max(created).as_py()) + dt.timedelta(milliseconds=1)
        paths = begin_snapshot(
            settings.paths,
            feed_length=settings.batch.feed_length,
            model_version="bench-random",
            lake_version=lake.current().name,
            as_of=as_of,
            video_shards=1,
            user_shards=1,
            embedding_dim=DIM,
        )
        rng = np.random.default_rng(SEED)
        video_ids = lake.read("videos", ["video_id"])["video_id"].combine_chunks()
        user_ids = lake.read("users", ["user_id"])["user_id"].combine_chunks()
        videos, users = _unit_vectors(rng, len(video_ids)), _unit_vectors(rng, len(user_ids))
        _write(paths.video_vectors(0, 1), "video_id", video_ids, videos)
        _write(paths.user_vectors(0, 1), "user_id", user_ids, users)

        bound_before = matmul_topk_bound(users, videos, settings.batch.feed_length)
        with stopwatch() as t_trend:
            build_trending(settings, paths.snapshot_id)
        with stopwatch() as t_mat:
            summary = materialize_feeds(settings, paths.snapshot_id, 0)
        bound_after = matmul_topk_bound(users, videos, settings.batch.feed_length)

    n = len(users)
    bound_s = (bound_before + bound_after) / 2
    mat_rate, bound_rate = n / t_mat[0], n / bound_s
    shape = f"{n:,} users x {len(videos):,} videos, {DIM}-d, feed {settings.batch.feed_length}"
    rows = [
        BenchRow(NAME, "materialize throughput", mat_rate, "users/s", f"{shape}, 1 shard, end to end incl. I/O"),
        BenchRow(NAME, "bound: matmul + topk", bound_rate, "users/s", f"same vectors, batch {BATCH_USERS}, k=feed"),
        BenchRow(NAME, "ratio materialize / bound", mat_rate / bound_rate, "x", "target >= 0.5"),
        BenchRow(NAME, "materialize wall time", t_mat[0], "s", f"{summary['rows']:,} feed rows"),
        BenchRow(NAME, "trending wall time", t_trend[0], "s", "trending.parquet"),
        BenchRow(NAME, "bound wall time", bound_s, "s", f"before {bound_before:.2f}s, after {bound_after:.2f}s"),
    ]
    rows += [
        BenchRow(NAME, f"stage: {stage}", value, "s", f"{100 * value / t_mat[0]:.0f}% of the run")
        for stage, value in summary["timings"].items()
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
