"""What the batch feed builder reads from a snapshot and its lake version: the feed catalogue and the interactions.

A :class:`FeedCatalogue` is the set of videos a feed may contain (those with a vector, known to the lake and created
before as-of), one row per video index, sorted by id; every later stage of the batch speaks in these indices.
(Not the towers' :class:`rec_core.model.features.Catalogue`, which holds model inputs.)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.feed.candidates import trending_order, trending_scores
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.reasons import TagIndex
from rec_core.settings import PathSettings
from rec_core.snapshot.files import VECTOR, VIDEO_ID, lake_table_path, read_lake_table, vectors_array
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeedCatalogue:
    """The videos a feed may contain; row ``i`` of every array is video index ``i``, videos sorted by id."""

    video_ids: pa.Array  # string [V]
    vectors: np.ndarray  # float32 [V, d]
    creator_codes: np.ndarray  # int64 [V]
    creator_ids: np.ndarray  # str [C], sorted
    created_ms: np.ndarray  # int64 [V]
    fresh: np.ndarray  # bool [V]
    popularity: np.ndarray  # float64 [V]
    trending: np.ndarray  # int64: video indices, most popular first (all videos)
    tags: TagIndex
    captions: pa.Array


@dataclass(frozen=True, slots=True)
class FeedInputs:
    """Everything a shard's feeds are built from, read once per run."""

    paths: SnapshotPaths
    build: BuildInfo
    as_of: dt.datetime
    policy: FeedPolicy
    catalogue: FeedCatalogue
    interactions: pl.DataFrame  # user_id, vidx, ts_ms, liked; before as-of, videos in the catalogue; lake order

    @property
    def as_of_ms(self) -> int:
        return int(self.as_of.timestamp() * 1000)


def load_inputs(
    path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo, *, with_vectors: bool = True
) -> FeedInputs:
    """The feed catalogue and interactions before as-of of a snapshot's build (``paths``), whose lake version
    lies under ``path_settings.lake_dir``; ``with_vectors=False`` leaves the catalogue's vectors out ([V, 0])."""
    as_of = dt.datetime.fromisoformat(build.as_of)
    as_of_ms = int(as_of.timestamp() * 1000)
    policy = FeedPolicy(feed_length=build.feed_length)
    files = [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    ids, vectors = read_vectors(
        files, VIDEO_ID, build, f"snapshot {paths.snapshot_id} video vectors", with_vectors=with_vectors
    )

    videos = pl.from_arrow(
        read_lake_table(path_settings, build, "videos", ["video_id", "creator_id", "caption", "hashtags", "created_at"])
    )
    assert isinstance(videos, pl.DataFrame)
    videos = videos.with_columns(pl.col("created_at").dt.epoch("ms").alias("created_ms"))
    row = codes_of(pl.Series(ids), videos["video_id"])
    if (row < 0).any():
        missing = pa.array(ids).filter(pa.array(row < 0))
        raise SnapshotError(f"{len(missing)} video(s) with vectors are not in lake {build.lake_version}: {missing[:3]}")
    videos = videos[row]
    known = (videos["created_ms"] < as_of_ms).to_numpy()
    if not known.all():
        log.info("%d video(s) created at or after as-of %s are left out", int((~known).sum()), build.as_of)
    keep = np.flatnonzero(known)
    videos = videos[keep]
    ids, vectors = ids.take(pa.array(keep)), vectors[keep]

    creator_ids, creator_codes = np.unique(videos["creator_id"].to_numpy().astype(str), return_inverse=True)
    created_ms = videos["created_ms"].to_numpy().astype(np.int64)
    interactions = (
        pl.scan_parquet(lake_table_path(path_settings, build, "interactions"))
        .select("user_id", "video_id", "ts", "completion", "liked", "shared", "commented")
        .with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))
        .filter(pl.col("ts_ms") < as_of_ms)
        .collect()
    )
    interactions = interactions.with_columns(pl.Series("vidx", codes_of(interactions["video_id"], pl.Series(ids))))
    # No sort needed for determinism: lake tables are stored sorted (ts, user, video), and filters keep that order.
    interactions = interactions.filter(pl.col("vidx") >= 0)
    popularity = trending_scores(
        interactions["vidx"].to_numpy(),
        interactions["ts_ms"].to_numpy(),
        interactions["completion"].to_numpy(),
        interactions["liked"].to_numpy(),
        interactions["commented"].to_numpy(),
        interactions["shared"].to_numpy(),
        n_videos=len(ids),
        as_of_ms=as_of_ms,
    )
    catalogue = FeedCatalogue(
        video_ids=ids,
        vectors=vectors,
        creator_codes=creator_codes.astype(np.int64),
        creator_ids=creator_ids,
        created_ms=created_ms,
        fresh=policy.is_fresh(created_ms, as_of_ms),
        popularity=popularity,
        trending=trending_order(popularity, created_ms),
        tags=TagIndex.build(videos["hashtags"], popularity),
        captions=videos["caption"].to_arrow(),
    )
    return FeedInputs(paths, build, as_of, policy, catalogue, interactions.select("user_id", "vidx", "ts_ms", "liked"))


def read_vectors(
    files: Sequence[Path], id_column: str, build: BuildInfo, what: str, *, with_vectors: bool = True
) -> tuple[pa.Array, np.ndarray]:
    """Ids and float32 [n, dim] vectors of shard files, sorted by id; raises on a missing file or a bad row.

    ``with_vectors=False`` reads the ids alone (a [n, 0] matrix comes back): for a stage that needs the set of
    videos with a vector but not the vectors, such as trending.
    """
    for path in files:
        if not path.is_file():
            raise SnapshotError(f"missing vector file {path}: run the embed stage for it first")
    columns = [id_column, VECTOR] if with_vectors else [id_column]
    table = pa.concat_tables([pq.read_table(p, columns=columns) for p in files])
    ids = table.column(id_column).combine_chunks()
    if not with_vectors:
        order = pc.sort_indices(ids).to_numpy()
        ids = ids.take(pa.array(order))
        _check_unique(ids, what)
        return ids, np.zeros((len(ids), 0), dtype=np.float32)
    column = table.column(VECTOR).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != build.embedding_dim:
        raise SnapshotError(
            f"{what}: vector column is {column.type}, expected fixed_size_list<float>[{build.embedding_dim}]"
        )
    if column.null_count:
        raise SnapshotError(f"{what}: {column.null_count} null vector(s)")
    vectors = vectors_array(table.select([VECTOR]))
    order = pc.sort_indices(ids).to_numpy()
    ids = ids.take(pa.array(order))
    _check_unique(ids, what)
    return ids, np.ascontiguousarray(vectors[order])


def _check_unique(sorted_ids: pa.Array, what: str) -> None:
    if len(sorted_ids) > 1:
        same = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
        if pc.any(same).as_py():
            dupe = sorted_ids.slice(1).filter(same)[0]
            raise SnapshotError(f"{what}: id {dupe} appears in more than one row")
    if sorted_ids.null_count:
        raise SnapshotError(f"{what}: {sorted_ids.null_count} null id(s)")


def codes_of(values: pl.Series, categories: pl.Series) -> np.ndarray:
    """Index of each value in ``categories`` (unique strings), -1 where absent."""
    if len(categories) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    codes = values.cast(pl.String).cast(pl.Enum(categories.cast(pl.String)), strict=False).to_physical()
    return codes.cast(pl.Int64).fill_null(-1).to_numpy()
