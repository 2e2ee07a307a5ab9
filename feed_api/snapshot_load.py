"""Reading a published snapshot folder into a :class:`feed_api.snapshot_view.SnapshotView`, and the views of the
other model versions it carries.

Everything comes from the snapshot folder (the model store only for a snapshot begun before it carried its
model). A row whose id breaks the id rule is left out with a warning and counted in ``skipped_ids``, so one bad id
does not keep every later snapshot from going live. A version's view shares the snapshot's catalogue arrays,
feeds, trending list and ranking state: only its model, vectors, collection and ranker are its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from feed_api.snapshot_view import AddedVideos, FeedIndex, RankedList, SnapshotView
from rec_core.experiments.assign import Assignment
from rec_core.experiments.spec import experiments_from_build
from rec_core.feed import policy
from rec_core.feed.catalogue import codes_of
from rec_core.feed.engagement import EngagementHead
from rec_core.feed.rank_stage import RankCatalogue, RankModel, load_rank_model
from rec_core.ids import id_problems
from rec_core.model.inference import as_of_ms, snapshot_catalogue
from rec_core.rank.ranker import Ranker
from rec_core.settings import PathSettings
from rec_core.snapshot.files import read_vector_shards, vectors_array
from rec_core.snapshot.layout import BuildInfo, SnapshotPaths
from rec_core.snapshot.manifest import read_manifest
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.vector_store import VectorStore

log = logging.getLogger(__name__)


def load_view(path_settings: PathSettings, paths: SnapshotPaths) -> SnapshotView:
    """Read a published snapshot into memory and open its Milvus collection; raises on anything missing."""
    started = time.perf_counter()
    read_manifest(paths)  # a snapshot without one was never validated
    policy.warm_up()  # the live path's feed policy is compiled: here, not in the first request
    build = paths.read_build()
    videos, bad_videos = _without_bad_ids(paths, read_vector_shards(paths, "videos", build.video_shards), "videos")
    video_ids = np.asarray(videos.column("video_id").to_pylist(), dtype=object)
    order = np.argsort(video_ids, kind="stable")
    video_ids = video_ids[order]
    vectors = vectors_array(videos)[order]
    codes = pl.DataFrame({"video_id": video_ids.astype(str), "code": np.arange(len(video_ids), dtype=np.int32)})

    model = load_snapshot_model(path_settings, paths, build)
    catalogue = snapshot_catalogue(paths, build, model)
    meta = pl.DataFrame(
        {
            "video_id": catalogue.video_ids.astype(str),
            "creator_id": catalogue.creator_ids.astype(str),
            "created_ms": catalogue.created_ms,
        }
    )
    meta = codes.join(meta, on="video_id", how="left").sort("code")
    if meta["creator_id"].null_count():
        missing = meta.filter(pl.col("creator_id").is_null())["video_id"].head(3).to_list()
        raise ValueError(f"snapshot {paths.snapshot_id}: vectors for videos its catalogue lacks, e.g. {missing}")

    feeds = _feed_index(paths, build, codes, bad_videos)
    trending_rows = pl.read_parquet(paths.trending_file).filter(~pl.col("video_id").is_in(bad_videos))
    trending = _ranked(trending_rows.sort("rank"), codes)
    users, bad_users = _without_bad_ids(paths, read_vector_shards(paths, "users", build.user_shards), "users")
    user_ids = users.column("user_id").to_pylist()
    store = _open_store(path_settings, paths, build)
    view = SnapshotView(
        snapshot_id=paths.snapshot_id,
        build=build,
        published_at=time.time(),
        as_of_ms=as_of_ms(build),
        video_ids=video_ids,
        video_code={v: i for i, v in enumerate(video_ids.tolist())},
        creator_ids=meta["creator_id"].to_numpy().astype(object),
        created_ms=meta["created_ms"].to_numpy().astype(np.int64),
        video_vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        feeds=feeds,
        trending=trending,
        trending_vector=_trending_vector(vectors, trending),
        user_row={u: i for i, u in enumerate(user_ids)},
        user_vectors=np.ascontiguousarray(vectors_array(users), dtype=np.float32),
        model=model,
        catalogue=catalogue,
        store=store,
        known_creators=frozenset(catalogue.creator_ids.tolist()),
        skipped_ids={k: len(v) for k, v in (("videos", bad_videos), ("users", bad_users)) if v},
        assignment=Assignment(experiments_from_build(build.experiments)),
    )
    ranker = load_rank_model(path_settings, paths, build, model)
    if ranker is not None:
        view.ranking = ranker.over(video_ids, view.video_vectors)
    try:
        for version in build.extra_versions:
            view.spaces[version] = _space_view(path_settings, paths.space(version, build), build.space(version), view)
    except Exception:
        view.close()
        raise
    log.info(
        "snapshot %s loaded in %.1fs: %d videos, %d users with feeds (%d items), %d user vectors",
        paths.snapshot_id,
        time.perf_counter() - started,
        len(video_ids),
        len(feeds.user_row),
        len(feeds.items),
        len(user_ids),
    )
    return view


def _open_store(path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo) -> VectorStore:
    store = VectorStore(paths.milvus_uri(path_settings), paths.collection_name(path_settings), build.embedding_dim)
    if not store.exists():
        store.close()
        raise ValueError(f"snapshot {paths.snapshot_id}: Milvus collection {store.collection} is missing")
    return store


def _trending_vector(vectors: np.ndarray, trending: RankedList) -> np.ndarray:
    """The mean of the top trending videos' vectors: where a user with nothing searches from."""
    top = trending.codes[: min(50, len(trending))]
    centroid = vectors[top].mean(axis=0) if len(top) else vectors.mean(axis=0)
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-12)).astype(np.float32)


def _space_view(
    path_settings: PathSettings, space: SnapshotPaths, build: BuildInfo, root: SnapshotView
) -> SnapshotView:
    """Another model version's view of the snapshot: ``root``'s catalogue, feeds and trending list with that
    version's model, video and user vectors (by the same codes), collection and ranker."""
    videos, _ = _without_bad_ids(space, read_vector_shards(space, "videos", build.video_shards), "videos")
    ids = pl.Series(videos.column("video_id").combine_chunks(), dtype=pl.String)
    rows = codes_of(pl.Series(root.video_ids.astype(str), dtype=pl.String), ids)
    if (rows < 0).any():
        raise ValueError(f"snapshot {space.snapshot_id}: model version {build.model_version} lacks video vectors")
    vectors = np.ascontiguousarray(vectors_array(videos)[rows], dtype=np.float32)
    users, _ = _without_bad_ids(space, read_vector_shards(space, "users", build.user_shards), "users")
    model = load_snapshot_model(path_settings, space, build)
    catalogue = snapshot_catalogue(space, build, model, shared=root.catalogue)
    view = replace(
        root,
        build=build,
        video_vectors=vectors,
        trending_vector=_trending_vector(vectors, root.trending),
        user_row={u: i for i, u in enumerate(users.column("user_id").to_pylist())},
        user_vectors=np.ascontiguousarray(vectors_array(users), dtype=np.float32),
        model=model,
        catalogue=catalogue,
        store=_open_store(path_settings, space, build),
        added=AddedVideos(),
        ranking=None,
        spaces={},
    )
    if root.ranking is not None and build.ranker_applied:
        # begin_snapshot writes every space's feature state from one state: share the root's, load the ranker.
        shared = root.ranking
        ranker = RankModel(Ranker.load(space.rank_dir), shared.model.state, EngagementHead.of(model.model.engagement))
        view.ranking = RankCatalogue(ranker, shared.item_rows, vectors)
    elif (ranker := load_rank_model(path_settings, space, build, model)) is not None:
        view.ranking = ranker.over(root.video_ids, vectors)
    return view


def _without_bad_ids(paths: SnapshotPaths, table: pa.Table, kind: str) -> tuple[pa.Table, list[str]]:
    """``kind``'s vector rows less those whose id breaks the id rule, and those ids."""
    ids = pl.Series("id", table.column(0).combine_chunks(), dtype=pl.String)
    bad_mask = ids.is_null() | id_problems(ids).is_not_null()
    if not bad_mask.any():
        return table, []
    bad = ids.filter(bad_mask).to_list()
    log.warning(
        "snapshot %s: %d %s vector(s) left out for an id that breaks the id rule, e.g. %s",
        paths.snapshot_id,
        len(bad),
        kind,
        ascii(bad[0])[:200],
    )
    return table.filter(pa.array((~bad_mask).to_numpy())), bad


def _ranked(frame: pl.DataFrame, codes: pl.DataFrame) -> RankedList:
    """Rows (in their order) with video ids turned into codes; reasons dictionary-encoded."""
    joined = frame.with_row_index("_row").join(codes, on="video_id", how="left").sort("_row")
    if joined["code"].null_count():
        raise ValueError("a feed names a video without a vector in the snapshot")
    reasons = joined["reason"].fill_null("")
    uniques = reasons.unique(maintain_order=True)
    lookup = pl.DataFrame({"reason": uniques, "reason_code": np.arange(len(uniques), dtype=np.int32)})
    reason_codes = reasons.to_frame().join(lookup, on="reason", how="left", maintain_order="left")["reason_code"]
    return RankedList(
        codes=joined["code"].to_numpy().astype(np.int32),
        scores=joined["score"].to_numpy().astype(np.float32),
        reason_codes=reason_codes.to_numpy().astype(np.int32),
        reasons=uniques.to_list(),
    )


def _feed_index(paths: SnapshotPaths, build: BuildInfo, codes: pl.DataFrame, bad_videos: list[str]) -> FeedIndex:
    parts = [paths.feed_part(s, build.user_shards) for s in range(build.user_shards)]
    frame = pl.concat([pl.from_arrow(pq.read_table(p)) for p in parts])  # type: ignore[misc]
    assert isinstance(frame, pl.DataFrame)
    if bad_videos:  # left out of the catalogue above; the ranks after them close up when paged
        frame = frame.filter(~pl.col("video_id").is_in(bad_videos))
    frame = frame.sort(["user_id", "rank"])
    counts = frame.group_by("user_id", maintain_order=True).agg(pl.len().alias("n"))
    offsets = np.concatenate([[0], np.cumsum(counts["n"].to_numpy())]).astype(np.int64)
    return FeedIndex(
        user_row={u: i for i, u in enumerate(counts["user_id"].to_list())},
        offsets=offsets,
        items=_ranked(frame.select("video_id", "score", "reason"), codes),
    )
